//! Images built from local binaries, without a registry: `FROM scratch`,
//! the binary, the shared libraries `ldd` lists, an empty `/tmp`; tagged by
//! content, built once.

use super::{DockerEngine, DockerError, FIXTURE_LABEL, block_on, is_not_found};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;
use testcontainers::bollard::query_parameters::{BuildImageOptionsBuilder, BuilderVersion};

/// Repository of the broker image (`soilstream-tansu:<content digest>`).
pub const TANSU_IMAGE_REPOSITORY: &str = "soilstream-tansu";

/// Repository of the `soilstream` image (`soilstream:<content digest>`).
pub const SOILSTREAM_IMAGE_REPOSITORY: &str = "soilstream";

/// Part of every content digest: bump it when the recipe below changes.
const RECIPE_VERSION: &str = "soilstream scratch image recipe 1";

/// Hex digits of the content digest used as the tag.
const TAG_HEX_DIGITS: usize = 16;

/// Where the binary goes in the image.
const BINARY_DIR: &str = "usr/local/bin";

/// Size of a tar block.
const TAR_BLOCK: usize = 512;

/// A locally built image: `repository:tag`, the tag a digest of its content.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DockerImage {
    repository: String,
    tag: String,
    built_now: bool,
}

impl DockerImage {
    /// The repository, e.g. `soilstream-tansu`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag: the first 16 hex digits of the SHA-256 of the recipe, the
    /// binary and its libraries.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// `repository:tag`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }

    /// Whether this call built the image (`false`: the tag existed).
    pub fn built_now(&self) -> bool {
        self.built_now
    }
}

impl std::fmt::Display for DockerImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

/// Builds (or finds) the broker image from the `tansu` binary the process
/// fixtures use (`$SOILSTREAM_TANSU`, `PATH`, cargo's bin directory). Its
/// working directory is `/data`, where the fixture mounts a volume for the
/// SQLite database.
pub fn build_tansu_image(engine: &DockerEngine) -> Result<DockerImage, DockerError> {
    let tansu = crate::find_tansu()?;
    build_binary_image(
        engine,
        &Recipe {
            repository: TANSU_IMAGE_REPOSITORY,
            binary: &tansu,
            binary_name: "tansu",
            workdir: "/data",
        },
    )
}

/// Builds (or finds) an image running the `soilstream` binary at `binary`
/// (e.g. `env!("CARGO_BIN_EXE_soilstream")`). Its working directory is
/// `/gw`, where the gateway fixture bind-mounts its directory.
pub fn build_soilstream_image(engine: &DockerEngine, binary: &Path) -> Result<DockerImage, DockerError> {
    build_binary_image(
        engine,
        &Recipe {
            repository: SOILSTREAM_IMAGE_REPOSITORY,
            binary,
            binary_name: "soilstream",
            workdir: "/gw",
        },
    )
}

/// What goes into an image.
struct Recipe<'a> {
    repository: &'a str,
    binary: &'a Path,
    binary_name: &'a str,
    workdir: &'a str,
}

/// One file of the image: its path in the image (relative to `/`), where
/// its content comes from, its mode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ImageFile {
    path: String,
    source: PathBuf,
    mode: u32,
}

/// The files and Dockerfile of an image and their digest.
#[derive(Debug, Clone)]
struct Plan {
    files: Vec<ImageFile>,
    dockerfile: String,
    digest: String,
}

impl Recipe<'_> {
    fn plan(&self) -> Result<Plan, DockerError> {
        let mut files = vec![ImageFile {
            path: format!("{BINARY_DIR}/{}", self.binary_name),
            source: self.binary.to_path_buf(),
            mode: 0o755,
        }];
        for library in shared_libraries(self.binary)? {
            let path = library
                .to_str()
                .and_then(|p| p.strip_prefix('/'))
                .ok_or_else(|| DockerError::Libraries {
                    binary: self.binary.display().to_string(),
                    detail: format!("{} is not an absolute UTF-8 path", library.display()),
                })?
                .to_string();
            files.push(ImageFile {
                path,
                source: library,
                mode: 0o755,
            });
        }
        let dockerfile = format!(
            "FROM scratch\nCOPY rootfs/ /\nWORKDIR {}\nENTRYPOINT [\"/{BINARY_DIR}/{}\"]\n",
            self.workdir, self.binary_name
        );
        let mut hasher = Sha256::new();
        hasher.update(RECIPE_VERSION.as_bytes());
        hasher.update([0]);
        hasher.update(dockerfile.as_bytes());
        for file in &files {
            hasher.update([0]);
            hasher.update(file.path.as_bytes());
            hasher.update(file.mode.to_le_bytes());
            hash_file(&mut hasher, &file.source)?;
        }
        let digest: String = hasher
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Ok(Plan {
            files,
            dockerfile,
            digest,
        })
    }
}

fn hash_file(hasher: &mut Sha256, path: &Path) -> Result<(), DockerError> {
    let mut file =
        std::fs::File::open(path).map_err(|e| DockerError::io(format!("opening {}", path.display()), e))?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut length: u64 = 0;
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(|e| DockerError::io(format!("reading {}", path.display()), e))?;
        if read == 0 {
            break;
        }
        length += read as u64;
        hasher.update(&buffer[..read]);
    }
    hasher.update(length.to_le_bytes());
    Ok(())
}

/// Plans are cached per (repository, binary, size, modification time):
/// hashing a 60 MB binary for every test would add up.
type PlanKey = (String, PathBuf, u64, Option<SystemTime>);

fn cached_plan(recipe: &Recipe<'_>) -> Result<Plan, DockerError> {
    static PLANS: OnceLock<Mutex<HashMap<PlanKey, Plan>>> = OnceLock::new();
    let metadata = std::fs::metadata(recipe.binary)
        .map_err(|e| DockerError::io(format!("reading the metadata of {}", recipe.binary.display()), e))?;
    let key = (
        recipe.repository.to_string(),
        recipe.binary.to_path_buf(),
        metadata.len(),
        metadata.modified().ok(),
    );
    let plans = PLANS.get_or_init(Default::default);
    if let Some(plan) = plans.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(plan.clone());
    }
    let plan = recipe.plan()?;
    plans
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, plan.clone());
    Ok(plan)
}

fn build_binary_image(engine: &DockerEngine, recipe: &Recipe<'_>) -> Result<DockerImage, DockerError> {
    // One build at a time in this process: two tests asking for the same
    // image build it once.
    static BUILDS: Mutex<()> = Mutex::new(());
    let _one_at_a_time = BUILDS.lock().unwrap_or_else(|p| p.into_inner());
    let plan = cached_plan(recipe)?;
    let mut image = DockerImage {
        repository: recipe.repository.to_string(),
        tag: plan.digest[..TAG_HEX_DIGITS].to_string(),
        built_now: false,
    };
    if image_exists(engine, &image.reference())? {
        return Ok(image);
    }
    let started = std::time::Instant::now();
    let context = build_context(&plan)?;
    let reference = image.reference();
    let docker = engine.client();
    let digest = plan.digest.clone();
    let context_bytes = context.len();
    block_on({
        let reference = reference.clone();
        async move {
            let labels = HashMap::from([
                (FIXTURE_LABEL.to_string(), "docker".to_string()),
                ("org.soilstream.content-sha256".to_string(), digest),
            ]);
            // The classic builder: no BuildKit session, no frontend image to
            // pull, and `FROM scratch` needs no base image.
            let options = BuildImageOptionsBuilder::new()
                .dockerfile("Dockerfile")
                .t(&reference)
                .rm(true)
                .forcerm(true)
                .labels(&labels)
                .version(BuilderVersion::BuilderV1)
                .build();
            let body = testcontainers::bollard::body_full(bytes::Bytes::from(context));
            let mut stream = docker.build_image(options, None, Some(body));
            let mut output = String::new();
            while let Some(item) = stream.next().await {
                let info = item.map_err(|e| DockerError::Build {
                    image: reference.clone(),
                    detail: format!("{e}; builder output:\n{output}"),
                })?;
                if let Some(error) = info.error_detail {
                    return Err(DockerError::Build {
                        image: reference.clone(),
                        detail: format!(
                            "{}; builder output:\n{output}",
                            error.message.unwrap_or_else(|| "unknown error".into())
                        ),
                    });
                }
                if let Some(line) = info.stream {
                    output.push_str(&line);
                }
            }
            Ok(())
        }
    })?;
    if !image_exists(engine, &reference)? {
        return Err(DockerError::Build {
            image: reference,
            detail: "the builder finished but the tag does not exist".into(),
        });
    }
    tracing::info!(
        image = %reference,
        context_bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "built image"
    );
    image.built_now = true;
    Ok(image)
}

/// Whether the engine holds `reference` (never pulls).
pub(crate) fn image_exists(engine: &DockerEngine, reference: &str) -> Result<bool, DockerError> {
    let docker = engine.client();
    let reference = reference.to_string();
    block_on(async move {
        match docker.inspect_image(&reference).await {
            Ok(_) => Ok(true),
            Err(error) if is_not_found(&error) => Ok(false),
            Err(error) => Err(DockerError::api(format!("inspecting image {reference}"), error)),
        }
    })
}

/// The build context: the Dockerfile and `rootfs/` holding every file and
/// directory of the image.
fn build_context(plan: &Plan) -> Result<Vec<u8>, DockerError> {
    let mut tar = TarWriter::default();
    tar.file("Dockerfile", 0o644, plan.dockerfile.as_bytes())?;
    let mut dirs = BTreeSet::from(["rootfs".to_string(), "rootfs/tmp".to_string()]);
    for file in &plan.files {
        let mut parent = Path::new(&file.path).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(format!("rootfs/{}", dir.display()));
            parent = dir.parent();
        }
    }
    for dir in &dirs {
        let mode = if dir == "rootfs/tmp" { 0o1777 } else { 0o755 };
        tar.dir(dir, mode)?;
    }
    for file in &plan.files {
        let content = std::fs::read(&file.source)
            .map_err(|e| DockerError::io(format!("reading {}", file.source.display()), e))?;
        tar.file(&format!("rootfs/{}", file.path), file.mode, &content)?;
    }
    Ok(tar.finish())
}

/// The shared libraries `ldd` lists for `binary`, the dynamic loader
/// included, as absolute paths (empty for a static binary).
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, DockerError> {
    let failed = |detail: String| DockerError::Libraries {
        binary: binary.display().to_string(),
        detail,
    };
    let output = Command::new("ldd").arg(binary).output().map_err(|e| {
        failed(format!(
            "cannot run `ldd` ({e}); it comes with the C library's tools"
        ))
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        if stdout.contains("not a dynamic executable") || stderr.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(failed(format!(
            "`ldd` failed ({}): {stderr}{stdout}",
            output.status
        )));
    }
    parse_ldd(&stdout).map_err(failed)
}

/// Parses `ldd` output: `name => /path (0x...)`, `/loader (0x...)`,
/// `linux-vdso.so.1 (0x...)` (no file: skipped), `statically linked`.
fn parse_ldd(output: &str) -> Result<Vec<PathBuf>, String> {
    let mut libraries = Vec::new();
    for line in output.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    return Err(format!("{} is not found", name.trim()));
                }
                target
            }
            None => line,
        };
        let path = target.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') && !libraries.iter().any(|l: &PathBuf| l == Path::new(path)) {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// A minimal ustar archive writer: regular files and directories, owned by
/// root, modification time 0 (the archive depends on content only).
#[derive(Debug, Default)]
struct TarWriter {
    bytes: Vec<u8>,
}

impl TarWriter {
    fn dir(&mut self, path: &str, mode: u32) -> Result<(), DockerError> {
        self.header(&format!("{}/", path.trim_end_matches('/')), mode, 0, b'5')
    }

    fn file(&mut self, path: &str, mode: u32, content: &[u8]) -> Result<(), DockerError> {
        self.header(path, mode, content.len() as u64, b'0')?;
        self.bytes.extend_from_slice(content);
        let padding = (TAR_BLOCK - content.len() % TAR_BLOCK) % TAR_BLOCK;
        self.bytes.resize(self.bytes.len() + padding, 0);
        Ok(())
    }

    fn header(&mut self, path: &str, mode: u32, size: u64, kind: u8) -> Result<(), DockerError> {
        let too_long = || DockerError::Build {
            image: "(build context)".into(),
            detail: format!("the path {path} does not fit a tar header"),
        };
        // ustar: up to 155 bytes of prefix, a '/', up to 100 bytes of name.
        let (prefix, name) = if path.len() <= 100 {
            ("", path)
        } else {
            let split = path
                .char_indices()
                .filter(|&(i, c)| c == '/' && i <= 155 && path.len() - i - 1 <= 100)
                .map(|(i, _)| i)
                .next()
                .ok_or_else(too_long)?;
            (&path[..split], &path[split + 1..])
        };
        if size >= 1 << 33 {
            return Err(DockerError::Build {
                image: "(build context)".into(),
                detail: format!("{path} is too large for a tar header"),
            });
        }
        let mut header = [0u8; TAR_BLOCK];
        header[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut header[100..108], u64::from(mode));
        octal(&mut header[108..116], 0);
        octal(&mut header[116..124], 0);
        octal(&mut header[124..136], size);
        octal(&mut header[136..148], 0);
        header[148..156].fill(b' ');
        header[156] = kind;
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[265..269].copy_from_slice(b"root");
        header[297..301].copy_from_slice(b"root");
        header[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        let checksum: u64 = header.iter().map(|&b| u64::from(b)).sum();
        octal(&mut header[148..155], checksum);
        header[155] = b' ';
        self.bytes.extend_from_slice(&header);
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.bytes.resize(self.bytes.len() + 2 * TAR_BLOCK, 0);
        self.bytes
    }
}

/// Writes `value` as zero-padded octal digits followed by a NUL.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_parsed_into_the_files_to_copy() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f4b)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f4b)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f4b)\n";
        assert_eq!(
            parse_ldd(output).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libz.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert_eq!(parse_ldd("\tstatically linked\n").unwrap(), Vec::<PathBuf>::new());
        let missing = parse_ldd("\tlibssl.so.3 => not found\n").unwrap_err();
        assert!(missing.contains("libssl.so.3"), "{missing}");
    }

    #[test]
    fn the_libraries_of_a_real_binary_include_the_loader_and_exist() {
        let libraries = shared_libraries(Path::new("/bin/sh")).unwrap();
        assert!(
            libraries.iter().any(|l| l.to_string_lossy().contains("ld-")),
            "{libraries:?}"
        );
        for library in &libraries {
            assert!(library.is_file(), "{}", library.display());
        }
    }

    #[test]
    fn the_tar_writer_makes_archives_that_tar_extracts() {
        let dir = tempfile::tempdir().unwrap();
        let mut tar = TarWriter::default();
        tar.dir("rootfs", 0o755).unwrap();
        tar.dir("rootfs/tmp", 0o1777).unwrap();
        tar.file("rootfs/hello.txt", 0o644, b"hello, soil\n").unwrap();
        let long_dir = format!("rootfs/{}", "d".repeat(90));
        let long_path = format!("{long_dir}/{}", "f".repeat(60));
        tar.dir(&long_dir, 0o755).unwrap();
        let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        tar.file(&long_path, 0o755, &big).unwrap();
        let archive = tar.finish();
        assert_eq!(archive.len() % TAR_BLOCK, 0);
        let archive_path = dir.path().join("context.tar");
        std::fs::write(&archive_path, &archive).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let status = Command::new("tar")
            .arg("-xf")
            .arg(&archive_path)
            .arg("-C")
            .arg(&out)
            .status()
            .expect("run tar");
        assert!(status.success(), "tar could not extract the archive");
        assert_eq!(
            std::fs::read(out.join("rootfs/hello.txt")).unwrap(),
            b"hello, soil\n"
        );
        assert_eq!(std::fs::read(out.join(&long_path)).unwrap(), big);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join(&long_path))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "executable bits kept: {mode:o}");
        assert!(out.join("rootfs/tmp").is_dir());
    }

    #[test]
    fn the_digest_follows_the_content_of_the_binary() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("tool");
        std::fs::copy("/bin/sh", &binary).unwrap();
        let recipe = Recipe {
            repository: "test",
            binary: &binary,
            binary_name: "tool",
            workdir: "/work",
        };
        let first = recipe.plan().unwrap();
        let again = recipe.plan().unwrap();
        assert_eq!(first.digest, again.digest, "deterministic");
        assert_eq!(first.files[0].path, "usr/local/bin/tool");
        assert!(first.files.len() > 1, "libraries included: {:?}", first.files);
        assert!(first.dockerfile.contains("FROM scratch"));
        let mut content = std::fs::read(&binary).unwrap();
        content.push(0);
        std::fs::write(&binary, content).unwrap();
        let changed = recipe.plan().unwrap();
        assert_ne!(first.digest, changed.digest, "a changed binary gets a new tag");
        let context = build_context(&changed).unwrap();
        assert!(context.len() > std::fs::metadata(&binary).unwrap().len() as usize);
    }
}
