//! Idempotent-producer state of one partition: which batches each producer
//! appended last, to dedupe resends and reject gaps.
//!
//! Rebuilt from the batches in the log on recovery, so it needs no file of
//! its own and is exactly as durable as the log it describes.

use crate::protocol::ErrorCode;
use std::collections::{BTreeMap, VecDeque};

/// Batches remembered per producer (Kafka keeps five).
pub(crate) const BATCHES_REMEMBERED: usize = 5;

/// A batch appended by a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchMeta {
    first_sequence: u64,
    last_sequence: u64,
    base_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ProducerEntry {
    epoch: u16,
    /// Most recent last.
    batches: VecDeque<BatchMeta>,
}

impl ProducerEntry {
    fn last(&self) -> BatchMeta {
        *self
            .batches
            .back()
            .expect("a producer entry holds at least one batch")
    }
}

/// What to do with a produced batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SequenceCheck {
    /// Append it.
    Append,
    /// Already appended at `base_offset`: acknowledge again, do not append.
    Duplicate {
        /// Offset of its first record.
        base_offset: i64,
    },
}

/// Producer state of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProducerStateTable {
    producers: BTreeMap<u64, ProducerEntry>,
    max_producers: usize,
}

impl ProducerStateTable {
    /// An empty table remembering at most `max_producers` producers.
    pub(crate) fn new(max_producers: usize) -> Self {
        assert!(max_producers > 0);
        Self {
            producers: BTreeMap::new(),
            max_producers,
        }
    }

    /// Decides what to do with a batch of `record_count` records.
    pub(crate) fn check(
        &self,
        producer_id: u64,
        epoch: u16,
        base_sequence: u64,
        record_count: usize,
    ) -> Result<SequenceCheck, ErrorCode> {
        assert!(record_count > 0, "batches are never empty");
        let last_sequence = base_sequence
            .checked_add(record_count as u64 - 1)
            .ok_or(ErrorCode::InvalidRequest)?;
        let Some(entry) = self.producers.get(&producer_id) else {
            // A producer's first batch on this partition starts at 0.
            return if base_sequence == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(ErrorCode::OutOfOrderSequence)
            };
        };
        if epoch < entry.epoch {
            return Err(ErrorCode::ProducerFenced);
        }
        if epoch > entry.epoch {
            // A new epoch starts its sequences again.
            return if base_sequence == 0 {
                Ok(SequenceCheck::Append)
            } else {
                Err(ErrorCode::OutOfOrderSequence)
            };
        }
        if let Some(batch) = entry
            .batches
            .iter()
            .find(|b| b.first_sequence == base_sequence && b.last_sequence == last_sequence)
        {
            return Ok(SequenceCheck::Duplicate {
                base_offset: batch.base_offset,
            });
        }
        let last = entry.last();
        if base_sequence == last.last_sequence + 1 {
            Ok(SequenceCheck::Append)
        } else if base_sequence <= last.last_sequence {
            Err(ErrorCode::DuplicateSequence)
        } else {
            Err(ErrorCode::OutOfOrderSequence)
        }
    }

    /// Records an appended batch (checked with [`Self::check`], or replayed
    /// from the log on recovery).
    pub(crate) fn record(
        &mut self,
        producer_id: u64,
        epoch: u16,
        base_sequence: u64,
        record_count: usize,
        base_offset: i64,
    ) {
        assert!(record_count > 0, "batches are never empty");
        let meta = BatchMeta {
            first_sequence: base_sequence,
            last_sequence: base_sequence.saturating_add(record_count as u64 - 1),
            base_offset,
        };
        let entry = self
            .producers
            .entry(producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch,
                batches: VecDeque::with_capacity(BATCHES_REMEMBERED),
            });
        if epoch != entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_REMEMBERED {
            entry.batches.pop_front();
        }
        entry.batches.push_back(meta);
        if self.producers.len() > self.max_producers {
            self.evict_least_recent();
        }
        debug_assert!(self.producers.len() <= self.max_producers);
    }

    /// Forgets the producer whose last batch is the oldest.
    fn evict_least_recent(&mut self) {
        let oldest = self
            .producers
            .iter()
            .min_by_key(|(id, entry)| (entry.last().base_offset, **id))
            .map(|(id, _)| *id);
        if let Some(id) = oldest {
            tracing::debug!(producer_id = id, "producer state evicted");
            self.producers.remove(&id);
        }
    }

    /// Number of producers remembered.
    pub(crate) fn len(&self) -> usize {
        self.producers.len()
    }

    /// (producer id, epoch, last sequence) of every producer, by id.
    pub(crate) fn summary(&self) -> impl Iterator<Item = (u64, u16, u64)> + '_ {
        self.producers
            .iter()
            .map(|(id, entry)| (*id, entry.epoch, entry.last().last_sequence))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_batch_starts_at_zero_and_then_follows() {
        let mut table = ProducerStateTable::new(4);
        assert_eq!(table.check(1, 0, 0, 3), Ok(SequenceCheck::Append));
        assert_eq!(table.check(1, 0, 1, 3), Err(ErrorCode::OutOfOrderSequence));
        table.record(1, 0, 0, 3, 10);
        assert_eq!(table.check(1, 0, 3, 2), Ok(SequenceCheck::Append));
        assert_eq!(table.check(1, 0, 4, 2), Err(ErrorCode::OutOfOrderSequence));
        assert_eq!(
            table.check(1, 0, 0, 3),
            Ok(SequenceCheck::Duplicate { base_offset: 10 })
        );
        assert_eq!(table.check(1, 0, 1, 2), Err(ErrorCode::DuplicateSequence));
    }

    #[test]
    fn only_the_last_five_batches_are_deduplicated() {
        let mut table = ProducerStateTable::new(4);
        for batch in 0..7_u64 {
            table.record(9, 0, batch * 2, 2, batch as i64 * 2);
        }
        assert_eq!(
            table.check(9, 0, 12, 2),
            Ok(SequenceCheck::Duplicate { base_offset: 12 })
        );
        assert_eq!(
            table.check(9, 0, 4, 2),
            Ok(SequenceCheck::Duplicate { base_offset: 4 })
        );
        assert_eq!(table.check(9, 0, 2, 2), Err(ErrorCode::DuplicateSequence));
        assert_eq!(table.check(9, 0, 14, 1), Ok(SequenceCheck::Append));
    }

    #[test]
    fn epochs_fence_and_restart_sequences() {
        let mut table = ProducerStateTable::new(4);
        table.record(1, 3, 0, 1, 0);
        assert_eq!(table.check(1, 2, 1, 1), Err(ErrorCode::ProducerFenced));
        assert_eq!(table.check(1, 4, 5, 1), Err(ErrorCode::OutOfOrderSequence));
        assert_eq!(table.check(1, 4, 0, 1), Ok(SequenceCheck::Append));
        table.record(1, 4, 0, 1, 1);
        assert_eq!(table.check(1, 4, 1, 1), Ok(SequenceCheck::Append));
    }

    #[test]
    fn the_least_recent_producer_is_forgotten_beyond_the_limit() {
        let mut table = ProducerStateTable::new(2);
        table.record(1, 0, 0, 1, 0);
        table.record(2, 0, 0, 1, 1);
        table.record(1, 0, 1, 1, 2);
        table.record(3, 0, 0, 1, 3);
        assert_eq!(table.len(), 2);
        let ids: Vec<u64> = table.summary().map(|(id, _, _)| id).collect();
        assert_eq!(ids, vec![1, 3]);
    }
}
