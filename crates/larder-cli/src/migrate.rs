//! `larder migrate …`

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use larder::migrate::{self, MigrateOptions, MigrationKind, Migrator};

/// Exit code of `verify` when it finds drift, missing files or dirty migrations.
pub(crate) const EXIT_PROBLEMS: u8 = 3;

/// Options shared by the migrate commands.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit codes: 0 success, 1 error (the message names the module, version, \
file and statement), 2 bad command line, 3 `verify` found problems.\n\
A `.sql` file with a bad name is an error; files that look like migrations but are not \
read (`1_a.SQL`, `1_a.sql.txt`, `1_a.txt`, subfolders) are printed as warnings (and under \
`skipped_files` with --json). A down script without statements is refused by `down` \
unless it has the line `-- larder:no-op-down`.\n\
Examples:\n  larder migrate new orders create_orders\n  larder migrate up --dry-run\n  \
larder --database-url postgres://app@db/app migrate up --json"
)]
pub(crate) struct MigrateArgs {
    /// Root folder holding `<module>/migrations/` folders
    #[arg(
        long,
        global = true,
        env = "LARDER_MIGRATIONS_DIR",
        default_value = "."
    )]
    dir: PathBuf,

    /// Seconds to wait for another migrator's lock
    #[arg(long, global = true, default_value_t = 60)]
    lock_timeout: u64,

    /// Do not stop when an applied migration's file is missing
    #[arg(long, global = true)]
    ignore_missing: bool,

    #[command(subcommand)]
    command: MigrateCommand,
}

#[derive(Debug, Subcommand)]
enum MigrateCommand {
    /// Apply pending migrations (all, or versioned ones up to --to)
    Up {
        /// Apply versioned migrations up to this version only (repeatables are skipped)
        #[arg(long)]
        to: Option<i64>,
        /// Print the plan and the SQL without applying anything
        #[arg(long)]
        dry_run: bool,
    },
    /// Revert applied migrations with their down scripts (newest first). A down script
    /// without statements (empty or only comments, like a fresh scaffold) is refused
    /// unless it has the line `-- larder:no-op-down` (nothing to revert: the migration is
    /// only forgotten); nothing is reverted then
    Down {
        /// How many migrations to revert [default: 1]
        #[arg(long, conflicts_with = "to")]
        steps: Option<usize>,
        /// Revert every applied migration above this version
        #[arg(long)]
        to: Option<i64>,
        /// Only migrations of this module
        #[arg(long)]
        module: Option<String>,
        /// Print what would be reverted without doing it
        #[arg(long)]
        dry_run: bool,
    },
    /// Show every migration: module, version, name, applied at, state
    Status,
    /// Check applied migrations against the files (checksums, missing files, dirty
    /// migrations) without applying anything; exits with 3 on problems
    Verify,
    /// Create `<dir>/<module>/migrations/<timestamp>_<name>.sql` and its `.down.sql`. The
    /// down script starts with comments only, which `down` refuses: write the statements
    /// that revert the migration, or add the line `-- larder:no-op-down`
    New {
        /// Module (folder) name, [a-z0-9_]
        module: String,
        /// Migration name, [a-z0-9_]
        name: String,
    },
    /// Mark an existing schema as migrated up to a version, without running anything
    Baseline {
        /// Record versioned migrations up to this version
        #[arg(long)]
        to: i64,
        /// Only this module
        #[arg(long)]
        module: Option<String>,
    },
    /// After fixing a dirty migration by hand: forget it (so `up` runs it again) or,
    /// with --mark-applied, record it as applied
    Repair {
        /// Module
        module: String,
        /// Version
        version: i64,
        /// Record as applied instead of forgetting it
        #[arg(long)]
        mark_applied: bool,
    },
}

fn scaffold(dir: &Path, module: &str, name: &str, json: bool) -> Result<()> {
    if !migrate::source::valid_module_name(module) {
        bail!("module name `{module}` must be [a-z0-9_] (at most 63 characters)");
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        bail!("migration name `{name}` must be [a-z0-9_]");
    }
    let folder = dir.join(module).join("migrations");
    std::fs::create_dir_all(&folder)
        .with_context(|| format!("cannot create {}", folder.display()))?;
    // Versions must grow: never reuse or go below an existing one.
    let mut version = migrate::timestamp_version();
    if folder.is_dir() {
        let existing = migrate::read_dir(module, &folder)?;
        if let Some(max) = existing
            .migrations
            .iter()
            .filter(|m| m.kind == MigrationKind::Versioned)
            .map(|m| m.version)
            .max()
        {
            version = version.max(max + 1);
        }
    }
    let up = folder.join(format!("{version}_{name}.sql"));
    let down = folder.join(format!("{version}_{name}.down.sql"));
    std::fs::write(&up, format!("-- {module}: {name}\n"))?;
    std::fs::write(
        &down,
        format!(
            "-- revert {module}: {name}\n\
             -- Write the statements that undo the up script. `larder migrate down` refuses\n\
             -- a down script without statements; if nothing needs reverting, add the line\n\
             -- `{}`, or delete this file (the migration cannot be reverted then).\n",
            migrate::source::NO_OP_DOWN
        ),
    )?;
    if json {
        println!(
            "{}",
            serde_json::json!({"ok": true, "up": up.display().to_string(), "down": down.display().to_string(), "version": version})
        );
    } else {
        println!("created {}", up.display());
        println!("created {}", down.display());
    }
    Ok(())
}

pub(crate) async fn run(
    args: &MigrateArgs,
    settings: &larder::Settings,
    json: bool,
) -> Result<ExitCode> {
    if let MigrateCommand::New { module, name } = &args.command {
        scaffold(&args.dir, module, name, json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let store = larder::connect(settings)
        .await
        .with_context(|| format!("cannot open {}", settings.database_url))?;
    let dialect = migrate::dialect(&store).ok_or_else(|| {
        anyhow::anyhow!("migrations need a SQL database (sqlite:// or postgres://)")
    })?;
    let set = migrate::set_from_dir(&args.dir, dialect)?;
    // Files that look like migrations but are not read: warned about on stderr by every
    // command (stdout stays one JSON document with --json), and listed in the JSON of
    // `status`, `up` and `verify`. They do not fail `verify`.
    let skipped: Vec<serde_json::Value> = set
        .skipped()
        .map(|s| {
            eprintln!("warning: {s}");
            serde_json::json!({"file": s.file, "reason": s.reason.as_str(), "message": s.to_string()})
        })
        .collect();
    let migrator = Migrator::new(set).with_options(MigrateOptions {
        lock_timeout: Duration::from_secs(args.lock_timeout),
        ignore_missing: args.ignore_missing,
    });
    let mut driver = migrate::driver(&store).await?;
    let d = driver.as_mut();
    let code = match &args.command {
        MigrateCommand::New { .. } => unreachable!("handled above"),
        MigrateCommand::Up { to, dry_run: true } => {
            let plan = migrator.plan(d, *to).await?;
            if json {
                let steps: Vec<serde_json::Value> = plan
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "migration": s.migration.label(),
                            "file": s.migration.origin,
                            "transaction": !s.migration.no_transaction,
                            "statements": s.statements.iter().map(|st| st.sql.clone()).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "dry_run": true, "plan": steps})
                );
            } else if plan.is_empty() {
                println!("nothing to apply");
            } else {
                for s in &plan {
                    let tx = if s.migration.no_transaction {
                        " (no transaction)"
                    } else {
                        ""
                    };
                    println!("-- {} from {}{tx}", s.migration.label(), s.migration.origin);
                    for st in &s.statements {
                        println!("{};", st.sql);
                    }
                    println!();
                }
                println!("{} migration(s) would be applied", plan.len());
            }
            ExitCode::SUCCESS
        }
        MigrateCommand::Up { to, dry_run: false } => {
            let bar = (!json && std::io::stderr().is_terminal()).then(|| {
                let b = indicatif::ProgressBar::new(0);
                b.set_style(
                    indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                b
            });
            let mut progress = |done: usize, total: usize, m: &migrate::Migration| {
                if let Some(b) = &bar {
                    b.set_length(total as u64);
                    b.set_position(done as u64);
                    b.set_message(m.label());
                }
            };
            let report = migrator.up(d, *to, &mut progress).await;
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            let report = report?;
            if json {
                let applied: Vec<serde_json::Value> = report
                    .applied
                    .iter()
                    .map(|(l, ms)| serde_json::json!({"migration": l, "ms": ms}))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "applied": applied, "skipped": report.skipped, "skipped_files": skipped})
                );
            } else {
                for (l, ms) in &report.applied {
                    println!("applied {l} ({ms} ms)");
                }
                for l in &report.skipped {
                    println!("skipped {l} (applied by a concurrent migrator)");
                }
                println!("{} migration(s) applied", report.applied.len());
            }
            ExitCode::SUCCESS
        }
        MigrateCommand::Down {
            steps,
            to,
            module,
            dry_run,
        } => {
            if *dry_run {
                let plan = migrator
                    .plan_down(d, module.as_deref(), *steps, *to)
                    .await?;
                if json {
                    let steps: Vec<serde_json::Value> = plan
                        .iter()
                        .map(|s| {
                            serde_json::json!({
                                "migration": s.migration.label(),
                                "statements": s.statements.iter().map(|st| st.sql.clone()).collect::<Vec<_>>(),
                            })
                        })
                        .collect();
                    println!(
                        "{}",
                        serde_json::json!({"ok": true, "dry_run": true, "revert": steps})
                    );
                } else {
                    for s in &plan {
                        let no_op = if s.statements.is_empty() {
                            " (no-op down: only forgotten)"
                        } else {
                            ""
                        };
                        println!("would revert {}{no_op}", s.migration.label());
                    }
                }
            } else {
                let report = migrator.down(d, module.as_deref(), *steps, *to).await?;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"ok": true, "reverted": report.reverted})
                    );
                } else {
                    for l in &report.reverted {
                        println!("reverted {l}");
                    }
                    println!("{} migration(s) reverted", report.reverted.len());
                }
            }
            ExitCode::SUCCESS
        }
        MigrateCommand::Status => {
            let rows = migrator.status(d).await?;
            print_rows(&rows, &skipped, json);
            ExitCode::SUCCESS
        }
        MigrateCommand::Verify => {
            let v = migrator.verify(d).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": v.problems.is_empty(), "problems": v.problems, "pending": v.pending, "skipped_files": skipped})
                );
            } else {
                for p in &v.problems {
                    println!("problem: {p}");
                }
                println!(
                    "{} problem(s), {} pending migration(s)",
                    v.problems.len(),
                    v.pending
                );
            }
            if v.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_PROBLEMS)
            }
        }
        MigrateCommand::Baseline { to, module } => {
            let report = migrator.baseline(d, module.as_deref(), *to).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "recorded": report.recorded})
                );
            } else {
                for l in &report.recorded {
                    println!("recorded {l}");
                }
                println!("{} migration(s) marked as applied", report.recorded.len());
            }
            ExitCode::SUCCESS
        }
        MigrateCommand::Repair {
            module,
            version,
            mark_applied,
        } => {
            migrator.repair(d, module, *version, *mark_applied).await?;
            let what = if *mark_applied {
                "marked as applied"
            } else {
                "forgotten: the next `up` runs it again"
            };
            if json {
                println!("{}", serde_json::json!({"ok": true}));
            } else {
                println!("{module}/{version} {what}");
            }
            ExitCode::SUCCESS
        }
    };
    drop(driver);
    store.close().await;
    Ok(code)
}

fn print_rows(rows: &[migrate::StatusRow], skipped: &[serde_json::Value], json: bool) {
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "module": r.module, "version": r.version, "name": r.name,
                    "kind": r.kind.as_str(), "state": r.state.as_str(),
                    "applied_at": r.applied_at, "execution_ms": r.execution_ms,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"ok": true, "migrations": v, "skipped_files": skipped})
        );
        return;
    }
    println!(
        "{:<16} {:>16} {:<32} {:<26} STATE",
        "MODULE", "VERSION", "NAME", "APPLIED AT"
    );
    for r in rows {
        let version = match r.kind {
            MigrationKind::Versioned => r.version.to_string(),
            MigrationKind::Repeatable => "R".to_owned(),
        };
        println!(
            "{:<16} {:>16} {:<32} {:<26} {}",
            r.module,
            version,
            r.name,
            r.applied_at.as_deref().unwrap_or("-"),
            r.state.as_str()
        );
    }
}
