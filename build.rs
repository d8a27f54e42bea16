//! Checks, before anything is compiled, that the PHP this build is for is one PHP.
//!
//! ext-php-rs reads two programs: `php` (`$PHP`, else the one on PATH) for the module API and
//! thread safety the extension declares, and `php-config` (`$PHP_CONFIG`, else PATH) for the
//! headers it compiles against. When they belong to two PHPs (php8.3's php-config beside
//! php8.2, a ZTS build's headers with Debian's NTS CLI), the build succeeds and the `.so` fails
//! only later, when some PHP refuses to load it or, worse, loads it with the wrong struct
//! layouts. So the build stops here, naming both PHPs, unless the CLI and the headers
//! `php-config` points at agree on the module API number, thread safety and debug mode, and
//! both name a PHP joinblock supports: 8.2 through 8.6 ([`SUPPORTED`]).
//!
//! It asks only what every PHP's programs answer, as php.net builds them (the official
//! `php:*` images, PIE's users, any source build), not only Debian's: `php -n -i`'s rows, and
//! `php-config --version` and `--include-dir`; the rest is read from the headers themselves
//! (Debian's `php-config --phpapi` exists nowhere else). When a program fails, the message
//! says what ran, what it printed and what to do.
//!
//! It also stamps the build (crate version, plus the git commit when built from this
//! repository's own checkout) for `php --ri joinblock`, and lets a macOS build link: PHP's
//! symbols are resolved when PHP loads the extension, which Apple's linker allows only when told.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

/// The oldest and newest PHP (major, minor) joinblock builds for. ext-php-rs 0.16.4 knows 8.0
/// (module API 20200930) to 8.6 (20260924) and no later one; 8.0 and 8.1 are past their end of
/// life and run by none of our tests.
const SUPPORTED: ((u32, u32), (u32, u32)) = ((8, 2), (8, 6));

/// What one side says about the PHP: where it came from and the three things that must agree.
#[derive(PartialEq)]
struct Build {
    api: String,
    zts: bool,
    debug: bool,
}

struct Described {
    what: String,
    version: String,
    build: Build,
}

/// `php-config`'s side, as its headers define it.
struct PhpConfig {
    described: Described,
    include_dir: PathBuf,
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for var in ["PHP", "PHP_CONFIG", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    stamp_version();
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-undefined,dynamic_lookup");
    }
    println!("cargo:rustc-check-cfg=cfg(php_trim_strips_form_feed)");
    match check_one_php() {
        // PHP 8.6's trim() strips a form feed too; the lock's name follows the PHP it runs in,
        // as the plugin's own computation does (src/lock/mod.rs).
        Ok(version) if version >= (8, 6) => println!("cargo:rustc-cfg=php_trim_strips_form_feed"),
        Ok(_) => {}
        Err(problem) => {
            // Cargo shows a failing build script's stderr; one paragraph, no backtrace.
            eprintln!("\nerror: {problem}\n");
            std::process::exit(1);
        }
    }
}

/// The PHP to build for, checked: one PHP on both sides, in the supported range. Returns its
/// major and minor version.
fn check_one_php() -> Result<(u32, u32), String> {
    let php = program("PHP", "php")?;
    let php_config = program("PHP_CONFIG", "php-config")?;
    let cli = describe_cli(&php)?;
    let config = describe_php_config(&php_config)?;
    let how = "Name the PHP to build for with both variables, e.g. \
               PHP=/usr/bin/phpX.Y PHP_CONFIG=/usr/bin/php-configX.Y cargo build --release \
               for Debian's PHP X.Y (a PHP built from source: PHP=<prefix>/bin/php PHP_CONFIG=<prefix>/bin/php-config)";
    if config.described.build != cli.build {
        return Err(format!(
            "PHP and php-config name two different PHPs: ext-php-rs would build for {} but compile \
             against {} (headers in {}); the extension would load in neither. {how}.",
            cli.line(),
            config.described.line(),
            config.include_dir.display()
        ));
    }
    // Both sides: php-config's version is that of the headers compiled against, the CLI's is
    // the PHP that will load the build.
    let (oldest, newest) = SUPPORTED;
    for side in [&config.described, &cli] {
        let found = side.minor_version()?;
        if found < oldest || found > newest {
            return Err(format!(
                "{} is PHP {}.{}, and joinblock supports PHP {}.{} through {}.{}. Build for a PHP in that \
                 range. {how}.",
                side.line(),
                found.0,
                found.1,
                oldest.0,
                oldest.1,
                newest.0,
                newest.1
            ));
        }
    }
    config.described.minor_version()
}

impl Described {
    fn line(&self) -> String {
        let zts = if self.build.zts { "ZTS" } else { "NTS" };
        let debug = if self.build.debug { ", debug" } else { "" };
        format!("{} (PHP {}, module API {}, {zts}{debug})", self.what, self.version, self.build.api)
    }

    /// (major, minor) of "8.5.7", "8.6.0RC3", "8.4.27-1+deb13u1".
    fn minor_version(&self) -> Result<(u32, u32), String> {
        let mut parts = self.version.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>());
        match (parts.next(), parts.next()) {
            (Some(Ok(major)), Some(Ok(minor))) => Ok((major, minor)),
            _ => Err(format!("cannot read a PHP version from {} (it says \"{}\")", self.what, self.version)),
        }
    }
}

/// `$VAR` when set, else `name` on PATH: the same choice ext-php-rs's build makes.
fn program(var: &str, name: &str) -> Result<PathBuf, String> {
    if let Some(path) = env::var_os(var).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(format!("{var}={} does not name a program", path.display()))
        };
    }
    env::var_os("PATH")
        .iter()
        .flat_map(env::split_paths)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            format!(
                "{name} is not on PATH and {var} is not set: install the PHP development files \
                 (Debian 12: apt install php8.2-cli php8.2-dev; Debian 13: php8.4-cli php8.4-dev) or set {var}=/path/to/{name}"
            )
        })
}

/// What `which` (and so ext-php-rs) takes for a program: an executable file.
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What `program args` prints; an empty answer is a failure too. A failure says what ran,
/// what came back and what to do.
fn run(program: &Path, args: &[&str]) -> Result<String, String> {
    let ran = format!("`{} {}`", program.display(), args.join(" "));
    let advice = "Point PHP and PHP_CONFIG at the CLI and the php-config of the PHP to build for \
                  (a PHP built from source: PHP=<prefix>/bin/php PHP_CONFIG=<prefix>/bin/php-config)";
    let output = Command::new(program).args(args).output().map_err(|e| format!("cannot run {ran}: {e}. {advice}."))?;
    let said = |bytes: &[u8]| {
        // One line, for a one-paragraph message.
        let text = String::from_utf8_lossy(bytes).split_whitespace().collect::<Vec<_>>().join(" ");
        // Enough to recognise a usage text, not a page of it.
        match text.char_indices().nth(600) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text,
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if output.status.success() && !stdout.is_empty() {
        return Ok(stdout);
    }
    let printed = [said(&output.stderr), said(&output.stdout)].into_iter().filter(|t| !t.is_empty()).collect::<Vec<_>>().join(" / ");
    let outcome = if output.status.success() { "printed nothing".to_owned() } else { format!("failed ({})", output.status) };
    let printed = if printed.is_empty() { "no output".to_owned() } else { format!("it printed: {printed}") };
    Err(format!("{ran} {outcome}; {printed}. {advice}."))
}

fn describe_cli(php: &Path) -> Result<Described, String> {
    // -n: an ini loading a broken extension must not change the answer. `php -i` has every
    // row needed on every PHP version.
    let info = run(php, &["-n", "-i"])?;
    let row = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(" => "))
            .map(str::trim)
            .ok_or_else(|| format!("{} -i shows no \"{name}\" row: is it PHP?", php.display()))
    };
    Ok(Described {
        what: format!("the CLI {}", php.display()),
        version: row("PHP Version")?.to_owned(),
        build: Build {
            api: row("PHP Extension")?.to_owned(),
            zts: row("Thread Safety")? == "enabled",
            debug: row("Debug Build")? == "yes",
        },
    })
}

/// What `php-config` names: its version, and the module API number, thread safety and debug
/// mode as the headers it points at define them (read from the files, as the compiler will).
fn describe_php_config(php_config: &Path) -> Result<PhpConfig, String> {
    let what = format!("php-config {}", php_config.display());
    let dir = PathBuf::from(run(php_config, &["--include-dir"])?);
    let read = |file: &str| {
        let path = dir.join(file);
        println!("cargo:rerun-if-changed={}", path.display());
        fs::read_to_string(&path).map_err(|e| format!("cannot read {} (named by {what}): {e}", path.display()))
    };
    let defined = |text: &str, name: &str| -> Option<String> {
        text.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("#define") && words.next() == Some(name))
                .then(|| words.next().unwrap_or("").trim_matches('"').to_owned())
        })
    };
    let api = defined(&read("Zend/zend_modules.h")?, "ZEND_MODULE_API_NO")
        .ok_or_else(|| format!("the headers in {} define no ZEND_MODULE_API_NO", dir.display()))?;
    let config = read("main/php_config.h")?;
    let described = Described {
        what,
        version: run(php_config, &["--version"])?,
        build: Build {
            api,
            zts: defined(&config, "ZTS").as_deref() == Some("1"),
            debug: defined(&config, "ZEND_DEBUG").as_deref() == Some("1"),
        },
    };
    Ok(PhpConfig { described, include_dir: dir })
}

/// `JOINBLOCK_BUILD`: "0.1.0", or "0.1.0 (git 1a2b3c4d5e6f)" when built from this repository's
/// checkout. A source archive unpacked inside some other repository (a site's vendor/ tree) is
/// not ours: the commit counts only when the checkout's top level is this crate's directory.
fn stamp_version() {
    let version = env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&manifest_dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let ours = git(&["rev-parse", "--show-toplevel"])
        .and_then(|top| fs::canonicalize(top).ok())
        .is_some_and(|top| fs::canonicalize(&manifest_dir).is_ok_and(|dir| dir == top));
    let stamp = match git(&["rev-parse", "--short=12", "HEAD"]).filter(|_| ours) {
        Some(commit) => {
            // A new commit or checkout changes HEAD, or the branch it points at: its loose ref,
            // else packed-refs. Only files that exist are named: cargo counts a missing one as
            // changed and would rebuild every time.
            let git_path = |name: &str| git(&["rev-parse", "--git-path", name]).map(|p| manifest_dir.join(p));
            let branch = git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git_path(&r));
            for path in [git_path("HEAD"), branch, git_path("packed-refs")].into_iter().flatten() {
                if path.is_file() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
            format!("{version} (git {commit})")
        }
        None => version,
    };
    println!("cargo:rustc-env=JOINBLOCK_BUILD={stamp}");
}
