use super::*;
use apache_avro::schema_compatibility::SchemaCompatibility;
use proptest::prelude::*;

fn parse(text: &str) -> Schema {
    Schema::parse_str(text).unwrap_or_else(|e| panic!("test schema does not parse: {e}\n{text}"))
}

fn record(fields: &str) -> Schema {
    parse(&format!(
        r#"{{"type":"record","name":"R","namespace":"t","fields":[{fields}]}}"#
    ))
}

fn messages(writer: &Schema, reader: &Schema, direction: Direction) -> Vec<String> {
    can_read(writer, reader)
        .iter()
        .map(|i| describe(i, direction))
        .collect()
}

#[test]
fn identical_and_promoted_types_are_readable() {
    let w = record(r#"{"name":"a","type":"int"},{"name":"b","type":"float"},{"name":"c","type":"string"}"#);
    let r = record(r#"{"name":"a","type":"long"},{"name":"b","type":"double"},{"name":"c","type":"bytes"}"#);
    assert!(can_read(&w, &w).is_empty());
    assert!(can_read(&w, &r).is_empty());
    // Promotions do not go back.
    let back = can_read(&r, &w);
    assert_eq!(back.len(), 2, "{back:?}");
    assert_eq!(back[0].path, "a");
    assert_eq!(back[1].path, "b");
}

#[test]
fn type_change_names_the_field_and_both_types() {
    let old = record(r#"{"name":"moisture_vwc","type":"double"}"#);
    let new = record(r#"{"name":"moisture_vwc","type":"string"}"#);
    assert_eq!(
        messages(&old, &new, Direction::NewReadsOld),
        vec!["field `moisture_vwc`: type changed from double to string"]
    );
    // The same change seen from the old reader's side reads the same way.
    assert_eq!(
        messages(&new, &old, Direction::OldReadsNew),
        vec!["field `moisture_vwc`: type changed from double to string"]
    );
}

#[test]
fn added_and_removed_fields_without_default_are_named() {
    let old = record(r#"{"name":"x","type":"int"}"#);
    let new = record(r#"{"name":"x","type":"int"},{"name":"y","type":"int"}"#);
    // BACKWARD: the new schema reads old data, which lacks `y`.
    assert_eq!(
        messages(&old, &new, Direction::NewReadsOld),
        vec!["field `y` added without default"]
    );
    // FORWARD after removing `y`: an old reader needs `y` and has no default.
    assert_eq!(
        messages(&old, &new, Direction::OldReadsNew),
        vec!["field `y` removed without default"]
    );
    let with_default = record(r#"{"name":"x","type":"int"},{"name":"y","type":"int","default":7}"#);
    assert!(can_read(&old, &with_default).is_empty());
}

#[test]
fn nested_record_changes_report_the_dotted_path() {
    let old = record(
        r#"{"name":"location","type":{"type":"record","name":"Loc","fields":[{"name":"lat","type":"double"}]}}"#,
    );
    let new = record(
        r#"{"name":"location","type":{"type":"record","name":"Loc","fields":[{"name":"lat","type":"double"},{"name":"alt_m","type":"float"}]}}"#,
    );
    assert_eq!(
        messages(&old, &new, Direction::NewReadsOld),
        vec!["field `location.alt_m` added without default"]
    );
    // The same inside an optional union, an array and a map.
    let wrap = |inner: &str| {
        record(&format!(
            r#"{{"name":"o","type":["null",{inner}],"default":null}},{{"name":"l","type":{{"type":"array","items":"Loc"}}}},{{"name":"m","type":{{"type":"map","values":"Loc"}}}}"#
        ))
    };
    let old = wrap(r#"{"type":"record","name":"Loc","fields":[{"name":"lat","type":"double"}]}"#);
    let new = wrap(r#"{"type":"record","name":"Loc","fields":[{"name":"lat","type":"string"}]}"#);
    assert_eq!(
        messages(&old, &new, Direction::NewReadsOld),
        vec![
            "field `o.lat`: type changed from double to string",
            "field `l[].lat`: type changed from double to string",
            "field `m{}.lat`: type changed from double to string",
        ]
    );
}

#[test]
fn optional_fields_and_unions() {
    let required = record(r#"{"name":"ec","type":"double"}"#);
    let optional = record(r#"{"name":"ec","type":["null","double"],"default":null}"#);
    // Making a field optional is backward compatible (a double fits the union)...
    assert!(can_read(&required, &optional).is_empty());
    // ...but a required reader cannot read a null.
    assert_eq!(
        messages(&optional, &required, Direction::NewReadsOld),
        vec!["field `ec`: type changed from union [null, double] to double"]
    );
    let widened = record(r#"{"name":"ec","type":["null","long","string"],"default":null}"#);
    let narrow = record(r#"{"name":"ec","type":["null","int"],"default":null}"#);
    assert!(can_read(&narrow, &widened).is_empty());
    assert_eq!(
        messages(&widened, &narrow, Direction::NewReadsOld),
        vec!["field `ec`: type changed from union [null, long, string] to union [null, int]"]
    );
}

#[test]
fn enums_fixed_and_names() {
    let e = |symbols: &str, default: &str| {
        record(&format!(
            r#"{{"name":"s","type":{{"type":"enum","name":"State","symbols":[{symbols}]{default}}}}}"#
        ))
    };
    let abc = e(r#""A","B","C""#, "");
    let ab = e(r#""A","B""#, "");
    let ab_default = e(r#""A","B""#, r#","default":"A""#);
    assert!(can_read(&ab, &abc).is_empty());
    assert_eq!(
        messages(&abc, &ab, Direction::NewReadsOld),
        vec!["field `s`: enum symbols [C] removed and the new enum has no default"]
    );
    assert!(can_read(&abc, &ab_default).is_empty());

    let f = |name: &str, size: usize| {
        record(&format!(
            r#"{{"name":"h","type":{{"type":"fixed","name":"{name}","size":{size}}}}}"#
        ))
    };
    assert_eq!(
        messages(&f("Hash", 16), &f("Hash", 32), Direction::NewReadsOld),
        vec!["field `h`: fixed size changed from 16 to 32 bytes"]
    );
    assert_eq!(
        messages(&f("Hash", 16), &f("Digest", 16), Direction::NewReadsOld),
        vec!["field `h`: type name changed from t.Hash to t.Digest (and no alias covers it)"]
    );
    let aliased =
        record(r#"{"name":"h","type":{"type":"fixed","name":"Digest","aliases":["Hash"],"size":16}}"#);
    assert!(can_read(&f("Hash", 16), &aliased).is_empty());
}

#[test]
fn field_aliases_allow_renames() {
    let old = record(r#"{"name":"temp","type":"double"}"#);
    let renamed = record(r#"{"name":"soil_temp_c","type":"double"}"#);
    let aliased = record(r#"{"name":"soil_temp_c","type":"double","aliases":["temp"]}"#);
    assert_eq!(
        messages(&old, &renamed, Direction::NewReadsOld),
        vec!["field `soil_temp_c` added without default"]
    );
    assert!(can_read(&old, &aliased).is_empty());
}

#[test]
fn logical_types_resolve_by_their_underlying_type() {
    let millis = record(r#"{"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}}"#);
    let micros = record(r#"{"name":"t","type":{"type":"long","logicalType":"timestamp-micros"}}"#);
    let long = record(r#"{"name":"t","type":"long"}"#);
    let string = record(r#"{"name":"t","type":"string"}"#);
    assert!(can_read(&millis, &long).is_empty());
    assert!(can_read(&long, &millis).is_empty());
    assert!(can_read(&millis, &micros).is_empty());
    assert_eq!(
        messages(&millis, &string, Direction::NewReadsOld),
        vec!["field `t`: type changed from timestamp-millis to string"]
    );
}

#[test]
fn recursive_types_terminate() {
    let list = |extra: &str| {
        parse(&format!(
            r#"{{"type":"record","name":"Node","fields":[{{"name":"v","type":"int"}},{{"name":"next","type":["null","Node"],"default":null}}{extra}]}}"#
        ))
    };
    let v1 = list("");
    let v2 = list(r#",{"name":"w","type":"int","default":0}"#);
    let v3 = list(r#",{"name":"w","type":"int"}"#);
    assert!(can_read(&v1, &v2).is_empty());
    assert!(can_read(&v2, &v1).is_empty());
    assert_eq!(
        messages(&v1, &v3, Direction::NewReadsOld),
        vec!["field `w` added without default"]
    );
}

#[test]
fn top_level_type_changes() {
    assert_eq!(
        messages(&parse(r#""string""#), &parse(r#""int""#), Direction::NewReadsOld),
        vec!["top-level schema: type changed from string to int"]
    );
    assert_eq!(
        messages(
            &record(""),
            &parse(r#"{"type":"record","name":"Other","fields":[]}"#),
            Direction::NewReadsOld
        ),
        vec!["top-level schema: type name changed from t.R to Other (and no alias covers it)"]
    );
}

#[test]
fn reports_are_bounded() {
    let fields = |ty: &str| {
        (0..100)
            .map(|i| format!(r#"{{"name":"f{i}","type":"{ty}"}}"#))
            .collect::<Vec<_>>()
            .join(",")
    };
    let found = can_read(&record(&fields("string")), &record(&fields("int")));
    assert_eq!(found.len(), INCOMPATIBILITIES_MAX_REPORTED + 1);
    assert_eq!(
        found.last().unwrap().kind,
        IncompatibilityKind::More {
            count: 100 - INCOMPATIBILITIES_MAX_REPORTED
        }
    );
}

#[test]
fn levels_parse_and_print() {
    for level in CompatibilityLevel::ALL {
        assert_eq!(level.as_str().parse::<CompatibilityLevel>().unwrap(), level);
        assert_eq!(
            level
                .as_str()
                .to_lowercase()
                .parse::<CompatibilityLevel>()
                .unwrap(),
            level
        );
    }
    assert!("SIDEWAYS".parse::<CompatibilityLevel>().is_err());
    assert_eq!(CompatibilityLevel::default(), CompatibilityLevel::Backward);
    use CompatibilityLevel as L;
    let backward: Vec<_> = L::ALL.into_iter().filter(|l| l.checks_backward()).collect();
    let forward: Vec<_> = L::ALL.into_iter().filter(|l| l.checks_forward()).collect();
    let transitive: Vec<_> = L::ALL.into_iter().filter(|l| l.is_transitive()).collect();
    assert_eq!(
        backward,
        [L::Backward, L::BackwardTransitive, L::Full, L::FullTransitive]
    );
    assert_eq!(
        forward,
        [L::Forward, L::ForwardTransitive, L::Full, L::FullTransitive]
    );
    assert_eq!(
        transitive,
        [L::BackwardTransitive, L::ForwardTransitive, L::FullTransitive]
    );
}

// Where apache-avro's checker departs from the resolution rules. Each test
// states the rule, shows that this checker follows it, and that apache-avro
// (0.21) does not; if apache-avro is fixed, the second assertion fails and
// the module documentation should be updated.

#[test]
fn divergence_writer_union_of_promotable_branches() {
    // Spec: a writer union is readable by a non-union reader when every
    // branch resolves to it.
    let w = record(r#"{"name":"n","type":["int","long"]}"#);
    let r = record(r#"{"name":"n","type":"double"}"#);
    assert!(can_read(&w, &r).is_empty());
    assert!(SchemaCompatibility::can_read(&w, &r).is_err());
}

#[test]
fn divergence_enum_default() {
    // Spec (1.9+): a symbol the reader lacks resolves to the reader's enum default.
    let w = record(r#"{"name":"s","type":{"type":"enum","name":"S","symbols":["A","B","C"]}}"#);
    let r = record(r#"{"name":"s","type":{"type":"enum","name":"S","symbols":["A","B"],"default":"A"}}"#);
    assert!(can_read(&w, &r).is_empty());
    assert!(SchemaCompatibility::can_read(&w, &r).is_err());
}

#[test]
fn divergence_logical_types_over_the_same_physical_type() {
    // Resolution is by underlying type: both are longs on the wire.
    let w = record(r#"{"name":"t","type":{"type":"long","logicalType":"timestamp-millis"}}"#);
    let r = record(r#"{"name":"t","type":{"type":"long","logicalType":"timestamp-micros"}}"#);
    assert!(can_read(&w, &r).is_empty());
    assert!(SchemaCompatibility::can_read(&w, &r).is_err());
}

// Differential test against apache-avro on generated record pairs, in the part
// of Avro where apache-avro follows the rules: primitives and promotions,
// optional primitives, arrays and maps of primitives, enums without enum
// defaults, nested records; fields present or absent, with or without defaults.

const PRIMITIVE_TYPES: [&str; 7] = ["int", "long", "float", "double", "string", "bytes", "boolean"];
const FIELD_NAMES: [&str; 4] = ["a", "b", "c", "d"];
const SYMBOLS: [&str; 3] = ["X", "Y", "Z"];

#[derive(Debug, Clone)]
enum GenType {
    Primitive(&'static str),
    Optional(&'static str),
    Array(&'static str),
    Map(&'static str),
    Enum(Vec<&'static str>),
    Record(Vec<(&'static str, GenType, bool)>),
}

fn primitive_default(p: &str) -> &'static str {
    match p {
        "int" | "long" => "0",
        "float" | "double" => "0.5",
        "boolean" => "false",
        _ => "\"\"",
    }
}

fn type_json(ty: &GenType, path: &str) -> String {
    match ty {
        GenType::Primitive(p) => format!("\"{p}\""),
        GenType::Optional(p) => format!(r#"["null","{p}"]"#),
        GenType::Array(p) => format!(r#"{{"type":"array","items":"{p}"}}"#),
        GenType::Map(p) => format!(r#"{{"type":"map","values":"{p}"}}"#),
        GenType::Enum(symbols) => {
            let list: Vec<String> = symbols.iter().map(|s| format!("\"{s}\"")).collect();
            format!(
                r#"{{"type":"enum","name":"E{path}","symbols":[{}]}}"#,
                list.join(",")
            )
        }
        GenType::Record(fields) => record_json(&format!("N{path}"), fields, path),
    }
}

fn record_json(name: &str, fields: &[(&'static str, GenType, bool)], path: &str) -> String {
    let mut parts = Vec::new();
    for (field, ty, with_default) in fields {
        let field_path = format!("{path}_{field}");
        let default = match (with_default, ty) {
            (false, _) | (true, GenType::Record(_)) => String::new(),
            (true, GenType::Primitive(p)) => format!(r#","default":{}"#, primitive_default(p)),
            (true, GenType::Optional(_)) => r#","default":null"#.to_owned(),
            (true, GenType::Array(_)) => r#","default":[]"#.to_owned(),
            (true, GenType::Map(_)) => r#","default":{}"#.to_owned(),
            (true, GenType::Enum(symbols)) => format!(r#","default":"{}""#, symbols[0]),
        };
        parts.push(format!(
            r#"{{"name":"{field}","type":{}{default}}}"#,
            type_json(ty, &field_path)
        ));
    }
    format!(
        r#"{{"type":"record","name":"{name}","fields":[{}]}}"#,
        parts.join(",")
    )
}

fn gen_type() -> BoxedStrategy<GenType> {
    let primitive = prop::sample::select(PRIMITIVE_TYPES.to_vec());
    let leaf = prop_oneof![
        4 => primitive.clone().prop_map(GenType::Primitive),
        2 => primitive.clone().prop_map(GenType::Optional),
        1 => primitive.clone().prop_map(GenType::Array),
        1 => primitive.prop_map(GenType::Map),
        1 => prop::sample::subsequence(SYMBOLS.to_vec(), 1..=3).prop_map(GenType::Enum),
    ];
    leaf.prop_recursive(2, 12, 3, |inner| gen_fields(inner).prop_map(GenType::Record))
        .boxed()
}

fn gen_fields(
    ty: impl Strategy<Value = GenType> + Clone,
) -> impl Strategy<Value = Vec<(&'static str, GenType, bool)>> {
    prop::collection::btree_map(
        prop::sample::select(FIELD_NAMES.to_vec()),
        (ty, any::<bool>()),
        0..4,
    )
    .prop_map(|m| m.into_iter().map(|(name, (ty, d))| (name, ty, d)).collect())
}

/// Number of generated pairs the differential test checks.
const DIFFERENTIAL_CASES: usize = 3000;

#[test]
fn agrees_with_apache_avro_where_it_is_right() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let pair = (gen_fields(gen_type()), gen_fields(gen_type()));
    let (mut compatible, mut incompatible) = (0usize, 0usize);
    for _ in 0..DIFFERENTIAL_CASES {
        let (writer_fields, reader_fields) = pair.new_tree(&mut runner).expect("strategy").current();
        let writer = parse(&record_json("Top", &writer_fields, ""));
        let reader = parse(&record_json("Top", &reader_fields, ""));
        let ours = can_read(&writer, &reader);
        let theirs = SchemaCompatibility::can_read(&writer, &reader);
        assert_eq!(
            ours.is_empty(),
            theirs.is_ok(),
            "writer {writer_fields:?}\nreader {reader_fields:?}\nours: {ours:?}\ntheirs: {theirs:?}"
        );
        // Every reported incompatibility names a field (the top-level records
        // share a name, so nothing is reported at the top level).
        for incompatibility in &ours {
            assert!(!incompatibility.path.is_empty(), "{incompatibility:?}");
        }
        if ours.is_empty() {
            compatible += 1;
        } else {
            incompatible += 1;
        }
    }
    eprintln!("differential: {compatible} compatible, {incompatible} incompatible");
    // The generator must exercise both outcomes for the agreement to mean anything.
    assert!(
        compatible >= DIFFERENTIAL_CASES / 10,
        "only {compatible} compatible pairs"
    );
    assert!(
        incompatible >= DIFFERENTIAL_CASES / 10,
        "only {incompatible} incompatible pairs"
    );
}
