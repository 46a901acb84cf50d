//! Migration sources: modules of SQL files, from a directory tree or embedded at compile
//! time, parsed by the same code either way.
//!
//! # File naming
//!
//! In a module's `migrations/` folder:
//!
//! | file | meaning |
//! |---|---|
//! | `<version>_<name>.sql` | versioned migration; `<version>` is digits (a timestamp such as `20261121093000` is the convention), `<name>` is `[a-z0-9_]+` |
//! | `<version>_<name>.down.sql` | its down script (optional) |
//! | `R__<name>.sql` | repeatable migration (views, functions): re-applied whenever its checksum changes, after the versioned ones |
//! | `module.toml` | optional: `depends_on = ["other_module"]` |
//!
//! Other `.sql` names (`1-foo.sql`, `V1__x.sql`, `_x.sql`, `create.sql`, `1_Create.sql`)
//! are errors naming the file. Files that are not read but look like migrations — `.sql`
//! or `module.toml` in another case (`1_a.SQL`), names containing `.sql` (`1_a.sql.txt`,
//! `1_a.sql.bak`), `<version>_<name>` or `R__<name>` with another extension (`1_a.txt`),
//! and folders inside `migrations/` — are skipped and listed in [`Module::skipped`] (the
//! CLI prints them as warnings). Anything else (`README.md`) and hidden files (`.gitkeep`,
//! editor swap files) are ignored.
//!
//! # Checksums
//!
//! SHA-256 of the *normalized* up script: line endings become `\n`, trailing whitespace on
//! every line and trailing blank lines are dropped. So re-saving a file with CRLF endings or
//! trimmed trailing spaces is not drift; any other change, including whitespace inside a
//! line or an added blank line between statements, is.
//!
//! # Directives
//!
//! A line `-- larder:no-transaction` in the up script runs it outside a transaction
//! (needed for `CREATE INDEX CONCURRENTLY`); it is recorded as dirty until it finishes.
//!
//! A down script without statements (empty, or only comments) is refused by `down`, so a
//! forgotten scaffold does not pretend to revert anything; a line `-- larder:no-op-down`
//! in it marks it as an intentional no-op (`down` then only forgets the history row).

use larder_core::error::{one_line, quote};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::MigrateError;

/// The name of larder's own module.
pub const BUILTIN_MODULE: &str = "larder";

/// Versioned or repeatable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MigrationKind {
    /// Applied once, in version order.
    Versioned,
    /// Re-applied when its checksum changes.
    Repeatable,
}

impl MigrationKind {
    /// `versioned` / `repeatable` (as stored in the history table).
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationKind::Versioned => "versioned",
            MigrationKind::Repeatable => "repeatable",
        }
    }
}

/// One migration of one module.
#[derive(Clone, PartialEq, Eq)]
pub struct Migration {
    /// The module.
    pub module: String,
    /// The version (0 for repeatable migrations).
    pub version: i64,
    /// The name from the file name.
    pub name: String,
    /// Versioned or repeatable.
    pub kind: MigrationKind,
    /// The up script.
    pub up: String,
    /// The down script, if any.
    pub down: Option<String>,
    /// Run outside a transaction (`-- larder:no-transaction`).
    pub no_transaction: bool,
    /// Hex SHA-256 of the normalized up script.
    pub checksum: String,
    /// Where it came from (a path, or `embedded:<module>/<file>`), for error messages.
    pub origin: String,
}

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("module", &self.module)
            .field("version", &self.version)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("no_transaction", &self.no_transaction)
            .field("has_down", &self.down.is_some())
            .field("origin", &self.origin)
            .finish()
    }
}

impl Migration {
    /// `module/version_name` (or `module/R__name`).
    pub fn label(&self) -> String {
        match self.kind {
            MigrationKind::Versioned => format!("{}/{}_{}", self.module, self.version, self.name),
            MigrationKind::Repeatable => format!("{}/R__{}", self.module, self.name),
        }
    }
}

/// A module: a named set of migrations, possibly depending on other modules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The module name (`[a-z0-9_]+`).
    pub name: String,
    /// Modules whose migrations must be applied first.
    pub depends_on: Vec<String>,
    /// Versioned migrations (ascending), then repeatable ones (by name).
    pub migrations: Vec<Migration>,
    /// Files of the folder that look like migrations but were not read (by file name).
    pub skipped: Vec<SkippedFile>,
}

/// A file in a migrations folder that looks like a migration but is not read, so nothing
/// in it is applied (see the module docs for which files count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedFile {
    /// The file (or folder), as `<origin>/<file name>`, escaped to one line.
    pub file: String,
    /// Why it was not read.
    pub reason: SkipReason,
}

/// Why a file that looks like a migration was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// `.sql` or `module.toml` in another case (`1_a.SQL`): names are case-sensitive.
    ExtensionCase,
    /// A migration-like name that does not end in `.sql` (`1_a.sql.txt`, `1_a.txt`).
    NotSql,
    /// A folder: migrations are not read from subfolders.
    Folder,
}

impl SkipReason {
    /// `extension_case`, `not_sql` or `folder` (as printed by `--json`).
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::ExtensionCase => "extension_case",
            SkipReason::NotSql => "not_sql",
            SkipReason::Folder => "folder",
        }
    }
}

impl fmt::Display for SkippedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.reason {
            SkipReason::ExtensionCase => {
                "skipped: names are case-sensitive, rename it with a lowercase `.sql` (or `module.toml`) to have it read"
            }
            SkipReason::NotSql => {
                "skipped: it looks like a migration but does not end in `.sql`; rename it to `<version>_<name>.sql` to have it applied, or move it out of the folder"
            }
            SkipReason::Folder => {
                "skipped: folders inside `migrations/` are not read; move its files up, or the folder out"
            }
        };
        write!(f, "{}: {why}", self.file)
    }
}

/// Whether a file that is not read looks like a migration, and why it was skipped.
fn skip_reason(file: &str) -> Option<SkipReason> {
    if file.starts_with('.') {
        return None;
    }
    let lower = file.to_ascii_lowercase();
    if lower != file && (lower.ends_with(".sql") || lower == "module.toml") {
        return Some(SkipReason::ExtensionCase);
    }
    if lower.contains(".sql") {
        return Some(SkipReason::NotSql);
    }
    let stem = file.split('.').next().unwrap_or(file);
    let versioned = stem.split_once('_').is_some_and(|(v, n)| {
        !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && !n.is_empty()
    });
    (versioned || stem.starts_with("R__")).then_some(SkipReason::NotSql)
}

/// Normalizes a script for checksumming (see the module docs).
pub fn normalize(script: &str) -> String {
    let mut out: Vec<&str> = script
        .split('\n')
        .map(|l| l.trim_end_matches(['\r', ' ', '\t']))
        .collect();
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    out.join("\n")
}

/// Hex SHA-256 of the normalized script.
pub fn checksum(script: &str) -> String {
    let digest = Sha256::digest(normalize(script).as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Whether `s` is a valid module name.
pub fn valid_module_name(s: &str) -> bool {
    valid_name(s) && s.len() <= 63
}

#[derive(Debug)]
enum FileKind {
    Up(i64, String),
    Down(i64, String),
    Repeatable(String),
    ModuleToml,
    Ignored,
}

fn classify(file: &str) -> Result<FileKind, String> {
    if file == "module.toml" {
        return Ok(FileKind::ModuleToml);
    }
    let Some(stem) = file.strip_suffix(".sql") else {
        return Ok(FileKind::Ignored);
    };
    if let Some(name) = stem.strip_prefix("R__") {
        if !valid_name(name) {
            return Err(
                "a repeatable migration is named `R__<name>.sql` with <name> in [a-z0-9_]".into(),
            );
        }
        return Ok(FileKind::Repeatable(name.to_owned()));
    }
    let (stem, down) = match stem.strip_suffix(".down") {
        Some(s) => (s, true),
        None => (stem, false),
    };
    let Some((version, name)) = stem.split_once('_') else {
        return Err(
            "expected `<version>_<name>.sql`, `<version>_<name>.down.sql` or `R__<name>.sql`"
                .into(),
        );
    };
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) || version.len() > 18 {
        return Err(format!(
            "`{}` is not a version (1 to 18 digits)",
            quote(version)
        ));
    }
    if !valid_name(name) {
        return Err(format!(
            "`{}` is not a migration name ([a-z0-9_], at most 100 characters)",
            quote(name)
        ));
    }
    let v: i64 = version
        .parse()
        .map_err(|_| format!("`{version}` is not a version"))?;
    if v == 0 {
        return Err("version 0 is reserved".into());
    }
    Ok(if down {
        FileKind::Down(v, name.to_owned())
    } else {
        FileKind::Up(v, name.to_owned())
    })
}

/// The line that marks a down script without statements as an intentional no-op.
pub const NO_OP_DOWN: &str = "-- larder:no-op-down";

fn has_directive(script: &str, directive: &str) -> bool {
    script
        .lines()
        .any(|l| l.trim().eq_ignore_ascii_case(directive))
}

fn has_no_transaction_directive(script: &str) -> bool {
    has_directive(script, "-- larder:no-transaction")
}

/// Whether a down script has a line [`NO_OP_DOWN`] (`-- larder:no-op-down`).
pub fn is_marked_no_op_down(script: &str) -> bool {
    has_directive(script, NO_OP_DOWN)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleToml {
    #[serde(default)]
    depends_on: Vec<String>,
}

/// Parses a module from `(file name, contents)` pairs. `origin` prefixes file names in
/// messages (a directory path, or `embedded:<module>`).
pub fn parse_module(
    module: &str,
    files: &[(String, String)],
    origin: &str,
) -> Result<Module, MigrateError> {
    if !valid_module_name(module) {
        return Err(MigrateError::InvalidFile {
            file: one_line(origin),
            reason: format!(
                "`{}` is not a module name ([a-z0-9_], at most 63 characters)",
                quote(module)
            ),
        });
    }
    // File and folder names are caller input: escaped, so a message stays on one line.
    let path = |f: &str| one_line(&format!("{origin}/{f}"));
    let mut ups: BTreeMap<i64, (String, String, String)> = BTreeMap::new();
    let mut downs: BTreeMap<i64, (String, String, String)> = BTreeMap::new();
    let mut repeatables: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut depends_on = Vec::new();
    let mut skipped = Vec::new();
    for (file, contents) in files {
        let kind = classify(file).map_err(|reason| MigrateError::InvalidFile {
            file: path(file),
            reason,
        })?;
        match kind {
            FileKind::Ignored => {
                if let Some(reason) = skip_reason(file) {
                    skipped.push(SkippedFile {
                        file: path(file),
                        reason,
                    });
                }
            }
            FileKind::ModuleToml => {
                let t: ModuleToml =
                    toml::from_str(contents).map_err(|e| MigrateError::InvalidFile {
                        file: path(file),
                        reason: e.message().to_owned(),
                    })?;
                depends_on = t.depends_on;
            }
            FileKind::Up(v, name) | FileKind::Down(v, name) => {
                let map = if file.ends_with(".down.sql") {
                    &mut downs
                } else {
                    &mut ups
                };
                if let Some((other, _, _)) = map.get(&v) {
                    return Err(MigrateError::DuplicateVersion {
                        module: module.to_owned(),
                        version: v,
                        files: vec![path(other), path(file)],
                    });
                }
                map.insert(v, (file.clone(), name, contents.clone()));
            }
            FileKind::Repeatable(name) => {
                repeatables.insert(name, (file.clone(), contents.clone()));
            }
        }
    }
    let mut migrations = Vec::new();
    for (v, (file, name, down)) in &downs {
        match ups.get(v) {
            None => {
                return Err(MigrateError::InvalidFile {
                    file: path(file),
                    reason: format!("down script without its up script `{v}_{name}.sql`"),
                });
            }
            Some((_, up_name, _)) if up_name != name => {
                return Err(MigrateError::InvalidFile {
                    file: path(file),
                    reason: format!(
                        "down script names `{name}` but the up script is `{v}_{up_name}.sql`"
                    ),
                });
            }
            Some(_) => {}
        }
        let _ = down;
    }
    for (v, (file, name, up)) in ups {
        let down = downs.remove(&v).map(|(_, _, d)| d);
        migrations.push(Migration {
            module: module.to_owned(),
            version: v,
            name,
            kind: MigrationKind::Versioned,
            no_transaction: has_no_transaction_directive(&up),
            checksum: checksum(&up),
            up,
            down,
            origin: path(&file),
        });
    }
    for (name, (file, up)) in repeatables {
        migrations.push(Migration {
            module: module.to_owned(),
            version: 0,
            name,
            kind: MigrationKind::Repeatable,
            no_transaction: has_no_transaction_directive(&up),
            checksum: checksum(&up),
            up,
            down: None,
            origin: path(&file),
        });
    }
    Ok(Module {
        name: module.to_owned(),
        depends_on,
        migrations,
        skipped,
    })
}

/// Reads one module from a folder of migration files.
pub fn read_dir(module: &str, dir: &Path) -> Result<Module, MigrateError> {
    let io = |e: std::io::Error| MigrateError::Io {
        path: dir.display().to_string(),
        reason: e.to_string(),
    };
    let origin = dir.display().to_string();
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // `Path::is_dir`/`is_file` follow symbolic links: a linked migration is read.
        let (is_dir, is_file) = (entry.path().is_dir(), entry.path().is_file());
        let reason = if is_dir && !name.starts_with('.') {
            Some(SkipReason::Folder)
        } else if is_file && !(name.ends_with(".sql") || name == "module.toml") {
            skip_reason(&name)
        } else {
            None
        };
        if let Some(reason) = reason {
            skipped.push(SkippedFile {
                file: one_line(&format!("{origin}/{name}")),
                reason,
            });
        }
        if !is_file || !(name.ends_with(".sql") || name == "module.toml") {
            continue;
        }
        let contents = std::fs::read_to_string(entry.path()).map_err(|e| MigrateError::Io {
            path: entry.path().display().to_string(),
            reason: e.to_string(),
        })?;
        files.push((name, contents));
    }
    files.sort();
    let mut m = parse_module(module, &files, &origin)?;
    m.skipped.extend(skipped);
    m.skipped.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(m)
}

/// Finds `<root>/<module>/migrations/` folders (the module is the folder's name).
pub fn discover(root: &Path) -> Result<Vec<Module>, MigrateError> {
    let io = |e: std::io::Error| MigrateError::Io {
        path: root.display().to_string(),
        reason: e.to_string(),
    };
    let mut dirs: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(root).map_err(io)? {
        let entry = entry.map_err(io)?;
        let dir = entry.path().join("migrations");
        if dir.is_dir() {
            dirs.push((entry.file_name().to_string_lossy().into_owned(), dir));
        }
    }
    dirs.sort();
    dirs.iter().map(|(m, d)| read_dir(m, d)).collect()
}

/// A validated set of modules in apply order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationSet {
    modules: Vec<Module>,
}

impl MigrationSet {
    /// Checks names, dependencies (known, acyclic) and orders the modules: a module comes
    /// after every module it depends on; otherwise `larder` first, then by name.
    pub fn new(modules: Vec<Module>) -> Result<MigrationSet, MigrateError> {
        let mut by_name: BTreeMap<String, Module> = BTreeMap::new();
        for m in modules {
            if by_name.contains_key(&m.name) {
                return Err(MigrateError::DuplicateModule { module: m.name });
            }
            by_name.insert(m.name.clone(), m);
        }
        for m in by_name.values() {
            for d in &m.depends_on {
                if !by_name.contains_key(d) {
                    return Err(MigrateError::UnknownDependency {
                        module: m.name.clone(),
                        dependency: d.clone(),
                    });
                }
            }
        }
        // Kahn's algorithm with a deterministic ready set.
        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut ordered = Vec::new();
        while done.len() < by_name.len() {
            let ready: Vec<String> = by_name
                .values()
                .filter(|m| {
                    !done.contains(&m.name) && m.depends_on.iter().all(|d| done.contains(d))
                })
                .map(|m| m.name.clone())
                .collect();
            let Some(next) = ready
                .iter()
                .find(|n| n.as_str() == BUILTIN_MODULE)
                .or_else(|| ready.first())
                .cloned()
            else {
                let stuck: Vec<String> = by_name
                    .keys()
                    .filter(|n| !done.contains(*n))
                    .cloned()
                    .collect();
                return Err(MigrateError::DependencyCycle { modules: stuck });
            };
            done.insert(next.clone());
            ordered.push(next);
        }
        let modules = ordered
            .into_iter()
            .filter_map(|n| by_name.remove(&n))
            .collect();
        Ok(MigrationSet { modules })
    }

    /// The modules in apply order.
    pub fn modules(&self) -> &[Module] {
        &self.modules
    }

    /// Every migration in apply order: module by module, versioned by version, then
    /// repeatable by name.
    pub fn migrations(&self) -> impl Iterator<Item = &Migration> {
        self.modules.iter().flat_map(|m| m.migrations.iter())
    }

    /// Every module's skipped files (see [`Module::skipped`]), in module order.
    pub fn skipped(&self) -> impl Iterator<Item = &SkippedFile> {
        self.modules.iter().flat_map(|m| m.skipped.iter())
    }

    /// Looks a migration up.
    pub fn find(
        &self,
        module: &str,
        kind: MigrationKind,
        version: i64,
        name: &str,
    ) -> Option<&Migration> {
        self.modules
            .iter()
            .find(|m| m.name == module)?
            .migrations
            .iter()
            .find(|m| {
                m.kind == kind
                    && match kind {
                        MigrationKind::Versioned => m.version == version,
                        MigrationKind::Repeatable => m.name == name,
                    }
            })
    }
}

/// Files of an embedded module, as produced by `larder::embed_migrations!`.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedModule {
    /// The module name.
    pub name: &'static str,
    /// `(file name, contents)`.
    pub files: &'static [(&'static str, &'static str)],
}

impl EmbeddedModule {
    /// Parses it (same rules and errors as a directory).
    pub fn parse(&self) -> Result<Module, MigrateError> {
        let files: Vec<(String, String)> = self
            .files
            .iter()
            .map(|(n, c)| ((*n).to_owned(), (*c).to_owned()))
            .collect();
        parse_module(self.name, &files, &format!("embedded:{}", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn parses_versioned_down_and_repeatable_files() {
        let m = parse_module(
            "orders",
            &files(&[
                ("20260101000000_create.sql", "CREATE TABLE t (id INT);"),
                ("20260101000000_create.down.sql", "DROP TABLE t;"),
                (
                    "20260102000000_index.sql",
                    "-- larder:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (id);",
                ),
                ("R__view.sql", "CREATE OR REPLACE VIEW v AS SELECT 1;"),
                ("README.md", "ignored"),
                ("module.toml", "depends_on = [\"customers\"]"),
            ]),
            "orders/migrations",
        )
        .unwrap();
        assert_eq!(m.depends_on, ["customers"]);
        let labels: Vec<String> = m.migrations.iter().map(Migration::label).collect();
        assert_eq!(
            labels,
            [
                "orders/20260101000000_create",
                "orders/20260102000000_index",
                "orders/R__view"
            ]
        );
        assert!(m.migrations[0].down.is_some());
        assert!(m.migrations[1].no_transaction);
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        for (bad, needle) in [
            (vec![("create.sql", "x")], "create.sql"),
            (vec![("01_Create.sql", "x")], "01_Create.sql"),
            (vec![("1_a.sql", "x"), ("01_b.sql", "y")], "01_b.sql"),
            (vec![("5_a.down.sql", "x")], "5_a.down.sql"),
            (vec![("0_a.sql", "x")], "0_a.sql"),
            (vec![("1-foo.sql", "x")], "1-foo.sql"),
            (vec![("V1__x.sql", "x")], "V1__x.sql"),
            (vec![("_x.sql", "x")], "_x.sql"),
            (vec![("R__View.sql", "x")], "R__View.sql"),
            (vec![("module.toml", "depends = 1")], "module.toml"),
        ] {
            let e = parse_module("m", &files(&bad), "m/migrations")
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn files_that_look_like_migrations_but_are_not_read_are_listed() {
        let m = parse_module(
            "m",
            &files(&[
                ("1_a.sql", "SELECT 1;"),
                ("2_b.SQL", "SELECT 2;"),
                ("3_c.Sql", "SELECT 3;"),
                ("4_d.sql.txt", "SELECT 4;"),
                ("4_d.sql.bak", "SELECT 4;"),
                ("5_e.txt", "SELECT 5;"),
                ("6_f", "SELECT 6;"),
                ("R__view.psql", "SELECT 7;"),
                ("MODULE.toml", ""),
                ("README.md", "not a migration"),
                ("notes.txt", "not a migration"),
                (".gitkeep", ""),
                (".1_a.sql.swp", ""),
            ]),
            "m/migrations",
        )
        .unwrap();
        assert_eq!(m.migrations.len(), 1);
        let got: Vec<(&str, SkipReason)> = m
            .skipped
            .iter()
            .map(|s| (s.file.as_str(), s.reason))
            .collect();
        use SkipReason::{ExtensionCase as Case, NotSql};
        assert_eq!(
            got,
            [
                ("m/migrations/2_b.SQL", Case),
                ("m/migrations/3_c.Sql", Case),
                ("m/migrations/4_d.sql.txt", NotSql),
                ("m/migrations/4_d.sql.bak", NotSql),
                ("m/migrations/5_e.txt", NotSql),
                ("m/migrations/6_f", NotSql),
                ("m/migrations/R__view.psql", NotSql),
                ("m/migrations/MODULE.toml", Case),
            ]
        );
        let text = m.skipped[0].to_string();
        assert!(
            text.starts_with("m/migrations/2_b.SQL: skipped: names are case-sensitive"),
            "{text}"
        );
        let set = MigrationSet::new(vec![m]).unwrap();
        assert_eq!(set.skipped().count(), 8);
    }

    #[test]
    fn read_dir_lists_skipped_files_and_folders_and_follows_links() {
        let dir = std::env::temp_dir().join(format!("larder-skipped-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("old")).unwrap();
        std::fs::create_dir_all(dir.join(".hidden")).unwrap();
        for (f, sql) in [
            ("1_a.sql", "SELECT 1;"),
            ("2_b.SQL", "SELECT 2;"),
            ("3_c.sql.txt", "SELECT 3;"),
            ("README.md", "docs"),
            ("old/9_z.sql", "SELECT 9;"),
            ("target.txt", "SELECT 4;"),
        ] {
            std::fs::write(dir.join(f), sql).unwrap();
        }
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.join("target.txt"), dir.join("4_linked.sql")).unwrap();
        let m = read_dir("m", &dir).unwrap();
        let d = dir.display();
        let got: Vec<(String, SkipReason)> = m
            .skipped
            .iter()
            .map(|s| (s.file.clone(), s.reason))
            .collect();
        assert_eq!(
            got,
            [
                (format!("{d}/2_b.SQL"), SkipReason::ExtensionCase),
                (format!("{d}/3_c.sql.txt"), SkipReason::NotSql),
                (format!("{d}/old"), SkipReason::Folder),
            ]
        );
        #[cfg(unix)]
        assert_eq!(m.migrations.len(), 2, "the symbolic link is read");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn whitespace_at_line_ends_does_not_change_the_checksum() {
        let a = checksum("CREATE TABLE t (id INT);\nSELECT 1;\n");
        assert_eq!(
            a,
            checksum("CREATE TABLE t (id INT);  \r\nSELECT 1;\r\n\r\n")
        );
        assert_ne!(a, checksum("CREATE TABLE t (id  INT);\nSELECT 1;\n"));
        assert_ne!(a, checksum("CREATE TABLE t (id INT);\n\nSELECT 1;\n"));
    }

    #[test]
    fn modules_are_ordered_by_dependency_then_builtin_then_name() {
        let m = |n: &str, deps: &[&str]| Module {
            name: n.into(),
            depends_on: deps.iter().map(|d| (*d).to_owned()).collect(),
            migrations: vec![],
            skipped: vec![],
        };
        let set = MigrationSet::new(vec![
            m("billing", &["orders"]),
            m("orders", &[]),
            m("larder", &[]),
            m("accounts", &[]),
        ])
        .unwrap();
        let names: Vec<&str> = set.modules().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["larder", "accounts", "orders", "billing"]);
        assert!(matches!(
            MigrationSet::new(vec![m("a", &["zzz"])]),
            Err(MigrateError::UnknownDependency { .. })
        ));
        assert!(matches!(
            MigrationSet::new(vec![m("a", &["b"]), m("b", &["a"])]),
            Err(MigrateError::DependencyCycle { .. })
        ));
    }
}
