//! The migration runner: verification, planning and the operations.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use jiff::tz::Offset;

use super::source::{Migration, MigrationKind, MigrationSet, is_marked_no_op_down};
use super::split::{Statement, split};
use super::{HistoryRow, MigrateError, MigrationDriver};

/// Options of a [`Migrator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateOptions {
    /// How long to wait for another migrator's lock.
    pub lock_timeout: Duration,
    /// Do not stop on history rows without a file: an applied migration whose file is
    /// gone, or any row (dirty included) of a module that is not in the set. A dirty
    /// migration of one of the set's own modules still stops the run.
    pub ignore_missing: bool,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            lock_timeout: Duration::from_secs(60),
            ignore_missing: false,
        }
    }
}

/// The state of one migration against a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationState {
    /// Applied, checksum matches.
    Applied,
    /// Not applied yet.
    Pending,
    /// A repeatable migration whose script changed: it will be re-applied.
    Changed,
    /// Ran outside a transaction and did not finish.
    Dirty,
    /// Applied, but the file changed since.
    Drifted,
    /// Applied, but the file is gone.
    Missing,
}

impl MigrationState {
    /// Lowercase name, as printed by `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationState::Applied => "applied",
            MigrationState::Pending => "pending",
            MigrationState::Changed => "changed",
            MigrationState::Dirty => "dirty",
            MigrationState::Drifted => "drifted",
            MigrationState::Missing => "missing",
        }
    }

    /// Whether this state stops `up` (and fails `verify`).
    pub fn is_problem(self) -> bool {
        matches!(
            self,
            MigrationState::Dirty | MigrationState::Drifted | MigrationState::Missing
        )
    }
}

/// One line of `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRow {
    /// The module.
    pub module: String,
    /// The version (0 for repeatable).
    pub version: i64,
    /// The name.
    pub name: String,
    /// Versioned or repeatable.
    pub kind: MigrationKind,
    /// The state.
    pub state: MigrationState,
    /// When it was applied.
    pub applied_at: Option<String>,
    /// How long it took.
    pub execution_ms: Option<i64>,
}

/// The result of `verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Every migration's state.
    pub rows: Vec<StatusRow>,
    /// One message per problem (drift, missing file, dirty).
    pub problems: Vec<String>,
    /// How many migrations `up` would apply.
    pub pending: usize,
}

/// A migration `up` (or a dry run) would apply, with its statements.
#[derive(Debug, Clone)]
pub struct PlannedStep {
    /// The migration.
    pub migration: Migration,
    /// Its statements.
    pub statements: Vec<Statement>,
}

/// What an operation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Migrations applied (label, milliseconds).
    pub applied: Vec<(String, i64)>,
    /// Migrations reverted.
    pub reverted: Vec<String>,
    /// Migrations recorded without running (baseline).
    pub recorded: Vec<String>,
    /// Migrations found already applied by a concurrent migrator.
    pub skipped: Vec<String>,
}

/// Runs a [`MigrationSet`] against a database through a [`MigrationDriver`].
#[derive(Debug, Clone)]
pub struct Migrator {
    set: MigrationSet,
    opts: MigrateOptions,
}

type Key = (String, MigrationKind, i64, String);

fn key_of(module: &str, kind: MigrationKind, version: i64, name: &str) -> Key {
    match kind {
        // Versioned migrations are identified by version (a renamed file is the same one).
        MigrationKind::Versioned => (module.to_owned(), kind, version, String::new()),
        MigrationKind::Repeatable => (module.to_owned(), kind, 0, name.to_owned()),
    }
}

/// `ts` as stored in `applied_at`: RFC 3339 in UTC with milliseconds.
fn rfc3339_millis(ts: Timestamp) -> String {
    let t = Offset::UTC.to_datetime(ts);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// `ts` as a migration version, `YYYYMMDDHHMMSS` in UTC.
fn version_at(ts: Timestamp) -> i64 {
    let t = Offset::UTC.to_datetime(ts);
    let date = (i64::from(t.year()) * 100 + i64::from(t.month())) * 100 + i64::from(t.day());
    date * 1_000_000
        + i64::from(t.hour()) * 10_000
        + i64::from(t.minute()) * 100
        + i64::from(t.second())
}

/// RFC 3339 UTC timestamp of now, as stored in `applied_at`.
pub(crate) fn now_rfc3339() -> String {
    rfc3339_millis(Timestamp::now())
}

/// Now as a migration version, `YYYYMMDDHHMMSS` in UTC (what `larder migrate new` uses).
pub fn timestamp_version() -> i64 {
    version_at(Timestamp::now())
}

fn elapsed_ms(t: Instant) -> i64 {
    i64::try_from(t.elapsed().as_millis()).unwrap_or(i64::MAX)
}

impl Migrator {
    /// A migrator for a set of modules, with default options.
    pub fn new(set: MigrationSet) -> Migrator {
        Migrator {
            set,
            opts: MigrateOptions::default(),
        }
    }

    /// Sets the options.
    #[must_use]
    pub fn with_options(mut self, opts: MigrateOptions) -> Migrator {
        self.opts = opts;
        self
    }

    /// The migrations.
    pub fn set(&self) -> &MigrationSet {
        &self.set
    }

    /// Every migration's state, plus history rows without a file. Pure: compares history
    /// with the files.
    fn check(&self, history: &[HistoryRow]) -> (Vec<StatusRow>, Vec<MigrateError>) {
        let mut by_key: HashMap<Key, &HistoryRow> = history
            .iter()
            .map(|r| (key_of(&r.module, r.kind, r.version, &r.name), r))
            .collect();
        let mut rows = Vec::new();
        let mut problems = Vec::new();
        for m in self.set.migrations() {
            let row = by_key.remove(&key_of(&m.module, m.kind, m.version, &m.name));
            let state = match row {
                None => MigrationState::Pending,
                Some(r) if !r.success => {
                    problems.push(MigrateError::Dirty {
                        module: m.module.clone(),
                        version: m.version,
                        name: m.name.clone(),
                    });
                    MigrationState::Dirty
                }
                Some(r) if r.checksum != m.checksum => match m.kind {
                    MigrationKind::Repeatable => MigrationState::Changed,
                    MigrationKind::Versioned => {
                        problems.push(MigrateError::Drift {
                            module: m.module.clone(),
                            version: m.version,
                            name: m.name.clone(),
                            applied: r.checksum.clone(),
                            current: m.checksum.clone(),
                        });
                        MigrationState::Drifted
                    }
                },
                Some(_) => MigrationState::Applied,
            };
            rows.push(StatusRow {
                module: m.module.clone(),
                version: m.version,
                name: m.name.clone(),
                kind: m.kind,
                state,
                applied_at: row.map(|r| r.applied_at.clone()),
                execution_ms: row.map(|r| r.execution_ms),
            });
        }
        let mut orphans: Vec<&HistoryRow> = by_key.into_values().collect();
        orphans
            .sort_by(|a, b| (&a.module, a.version, &a.name).cmp(&(&b.module, b.version, &b.name)));
        for r in orphans {
            let state = if r.success {
                MigrationState::Missing
            } else {
                MigrationState::Dirty
            };
            // The dirty check is per module: a dirty row stops this run only when its
            // module is one of this set's (it is half-migrated, and its later migrations
            // are here). A row of a module outside the set — another service's module,
            // a removed module folder, or every user module when the event store applies
            // the built-in one — is this run's business only as a missing file, which
            // `ignore_missing` waives.
            let own = self.set.modules().iter().any(|m| m.name == r.module);
            if !(self.opts.ignore_missing && (r.success || !own)) {
                let (module, version, name) = (r.module.clone(), r.version, r.name.clone());
                problems.push(if r.success {
                    MigrateError::Missing {
                        module,
                        version,
                        name,
                    }
                } else {
                    MigrateError::Dirty {
                        module,
                        version,
                        name,
                    }
                });
            }
            rows.push(StatusRow {
                module: r.module.clone(),
                version: r.version,
                name: r.name.clone(),
                kind: r.kind,
                state,
                applied_at: Some(r.applied_at.clone()),
                execution_ms: Some(r.execution_ms),
            });
        }
        (rows, problems)
    }

    /// The state of every migration (reads the history; applies nothing).
    pub async fn status(
        &self,
        d: &mut dyn MigrationDriver,
    ) -> Result<Vec<StatusRow>, MigrateError> {
        let history = d.history().await?;
        Ok(self.check(&history).0)
    }

    /// Checks the database against the files without applying anything.
    pub async fn verify(&self, d: &mut dyn MigrationDriver) -> Result<Verification, MigrateError> {
        let history = d.history().await?;
        let (rows, problems) = self.check(&history);
        let pending = rows
            .iter()
            .filter(|r| matches!(r.state, MigrationState::Pending | MigrationState::Changed))
            .count();
        Ok(Verification {
            rows,
            problems: problems.iter().map(ToString::to_string).collect(),
            pending,
        })
    }

    fn pending_steps(&self, rows: &[StatusRow], to: Option<i64>) -> Vec<PlannedStep> {
        self.set
            .migrations()
            .zip(rows)
            .filter(|(m, r)| {
                matches!(r.state, MigrationState::Pending | MigrationState::Changed)
                    && match (m.kind, to) {
                        (_, None) => true,
                        (MigrationKind::Versioned, Some(v)) => m.version <= v,
                        (MigrationKind::Repeatable, Some(_)) => false,
                    }
            })
            .map(|(m, _)| PlannedStep {
                migration: m.clone(),
                statements: split(&m.up),
            })
            .collect()
    }

    /// What `up` would apply (verifying first; applies nothing).
    pub async fn plan(
        &self,
        d: &mut dyn MigrationDriver,
        to: Option<i64>,
    ) -> Result<Vec<PlannedStep>, MigrateError> {
        let history = d.history().await?;
        let (rows, mut problems) = self.check(&history);
        if !problems.is_empty() {
            return Err(problems.remove(0));
        }
        Ok(self.pending_steps(&rows, to))
    }

    /// Runs `body` in a transaction: commit on `Ok`, rollback on `Err` (so no error path
    /// leaves the connection inside a transaction).
    async fn in_transaction<T>(
        d: &mut dyn MigrationDriver,
        body: impl AsyncFnOnce(&mut dyn MigrationDriver) -> Result<T, MigrateError>,
    ) -> Result<T, MigrateError> {
        d.begin().await?;
        match body(&mut *d).await {
            Ok(v) => match d.commit().await {
                Ok(()) => Ok(v),
                Err(e) => {
                    let _ = d.rollback().await;
                    Err(e.into())
                }
            },
            Err(e) => {
                let _ = d.rollback().await;
                Err(e)
            }
        }
    }

    /// Runs `body` holding the migration lock, releasing it on every path.
    async fn locked<T>(
        &self,
        d: &mut dyn MigrationDriver,
        body: impl AsyncFnOnce(&mut dyn MigrationDriver) -> Result<T, MigrateError>,
    ) -> Result<T, MigrateError> {
        d.lock(self.opts.lock_timeout).await?;
        let r = body(&mut *d).await;
        let u = d.unlock().await;
        let out = r?;
        u?;
        Ok(out)
    }

    /// Applies pending migrations (all, or versioned ones up to `to`), calling `progress`
    /// after each.
    pub async fn up(
        &self,
        d: &mut dyn MigrationDriver,
        to: Option<i64>,
        progress: &mut (dyn FnMut(usize, usize, &Migration) + Send),
    ) -> Result<Report, MigrateError> {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "larder.migrate.up",
            otel.kind = "client",
            larder.migrations_applied = tracing::field::Empty,
            larder.migrations_skipped = tracing::field::Empty,
            error.type = tracing::field::Empty,
            error.message = tracing::field::Empty,
        );
        let run = async {
            // Not `locked()`: an async closure here makes the future's `Send` bound
            // unprovable for callers that box it (backends applying the built-in module).
            d.lock(self.opts.lock_timeout).await?;
            let r = self.up_locked(d, to, progress).await;
            let u = d.unlock().await;
            let out = r?;
            u?;
            Ok(out)
        };
        let result: Result<Report, MigrateError> = run.instrument(span.clone()).await;
        match &result {
            Ok(report) => {
                span.record("larder.migrations_applied", report.applied.len() as u64);
                span.record("larder.migrations_skipped", report.skipped.len() as u64);
            }
            Err(e) => {
                span.record("error.type", "migrate");
                span.record("error.message", tracing::field::display(e));
            }
        }
        result
    }

    async fn up_locked(
        &self,
        d: &mut dyn MigrationDriver,
        to: Option<i64>,
        progress: &mut (dyn FnMut(usize, usize, &Migration) + Send),
    ) -> Result<Report, MigrateError> {
        d.ensure_history().await?;
        let steps = self.plan(d, to).await?;
        let mut report = Report::default();
        let total = steps.len();
        for (i, step) in steps.iter().enumerate() {
            match self.apply(d, step, &report).await? {
                Some(ms) => report.applied.push((step.migration.label(), ms)),
                None => report.skipped.push(step.migration.label()),
            }
            progress(i + 1, total, &step.migration);
        }
        Ok(report)
    }

    fn row(m: &Migration, success: bool, ms: i64) -> HistoryRow {
        HistoryRow {
            module: m.module.clone(),
            version: m.version,
            name: m.name.clone(),
            kind: m.kind,
            checksum: m.checksum.clone(),
            applied_at: now_rfc3339(),
            execution_ms: ms,
            success,
        }
    }

    /// Whether a concurrent migrator (SQLite: no global lock) has applied it already.
    async fn already_applied(
        d: &mut dyn MigrationDriver,
        m: &Migration,
    ) -> Result<bool, MigrateError> {
        match d.find_row(&m.module, m.kind, m.version, &m.name).await? {
            Some(r) if !r.success => Err(MigrateError::Dirty {
                module: m.module.clone(),
                version: m.version,
                name: m.name.clone(),
            }),
            Some(r) => Ok(r.checksum == m.checksum),
            None => Ok(false),
        }
    }

    async fn run_statements(
        d: &mut dyn MigrationDriver,
        step: &PlannedStep,
        report: &Report,
    ) -> Result<(), MigrateError> {
        for (i, s) in step.statements.iter().enumerate() {
            if let Err(source) = d.execute(&s.sql).await {
                return Err(Self::failure(step, report, i, source));
            }
        }
        Ok(())
    }

    /// Applies one step; `None` if another migrator got there first.
    async fn apply(
        &self,
        d: &mut dyn MigrationDriver,
        step: &PlannedStep,
        report: &Report,
    ) -> Result<Option<i64>, MigrateError> {
        let m = &step.migration;
        let started = Instant::now();
        tracing::info!(
            target: "larder::migrate",
            module = %m.module,
            version = m.version,
            name = %m.name,
            "applying migration"
        );
        // With a lock held for the whole run (PostgreSQL's advisory lock, SQLite's run
        // lease) the plan is still true, and a transactional migration's `BEGIN` travels
        // in the script's own request (one round trip fewer per migration). Without one,
        // another migrator may have applied this meanwhile: re-check inside the write
        // transaction first.
        let run_lock = d.holds_run_lock();
        let began = !run_lock || m.no_transaction;
        if began {
            d.begin().await?;
        }
        if !run_lock {
            match Self::already_applied(d, m).await {
                Ok(true) => {
                    d.commit().await?;
                    return Ok(None);
                }
                Ok(false) => {}
                Err(e) => {
                    let _ = d.rollback().await;
                    return Err(e);
                }
            }
        }
        if m.no_transaction {
            // Claim it as dirty, durably, before running anything outside a transaction;
            // statements run one by one (several in one request would share an implicit
            // transaction, which `CREATE INDEX CONCURRENTLY` refuses).
            let claimed = match d.upsert_row(&Self::row(m, false, 0)).await {
                Ok(()) => d.commit().await,
                Err(e) => Err(e),
            };
            if let Err(e) = claimed {
                let _ = d.rollback().await;
                return Err(e.into());
            }
            Self::run_statements(d, step, report).await?;
            d.upsert_row(&Self::row(m, true, elapsed_ms(started)))
                .await?;
        } else {
            // The whole script in one request; only if it fails are the statements re-run
            // one by one (in a transaction that is rolled back) to name the failing one.
            let ran = if began {
                d.execute(&m.up).await
            } else {
                d.begin_and_execute(&m.up).await
            };
            if let Err(e) = ran {
                // Also when `BEGIN` itself failed (nothing to roll back then):
                // `locate_failure` begins again on its own and reports what fails.
                let _ = d.rollback().await;
                return Err(Self::locate_failure(d, step, report, e).await);
            }
            if let Err(e) = d
                .record_and_commit(&Self::row(m, true, elapsed_ms(started)))
                .await
            {
                let _ = d.rollback().await;
                return Err(e.into());
            }
        }
        Ok(Some(elapsed_ms(started)))
    }

    /// After a script failed as a whole: finds the failing statement by running them one
    /// by one in a transaction that is always rolled back.
    async fn locate_failure(
        d: &mut dyn MigrationDriver,
        step: &PlannedStep,
        report: &Report,
        whole: larder_core::Error,
    ) -> MigrateError {
        if d.begin().await.is_err() {
            return Self::failure(step, report, 0, whole);
        }
        let found = Self::run_statements(d, step, report).await;
        let _ = d.rollback().await;
        match found {
            Err(e) => e,
            // Every statement passed alone: report the whole script's error.
            Ok(()) => Self::failure(step, report, 0, whole),
        }
    }

    fn failure(
        step: &PlannedStep,
        report: &Report,
        index: usize,
        source: larder_core::Error,
    ) -> MigrateError {
        let line = step.statements.get(index).map_or(1, |s| s.line);
        MigrateError::Failed(Box::new(super::Failure {
            migration: step.migration.label(),
            file: step.migration.origin.clone(),
            statement: index + 1,
            of: step.statements.len(),
            line,
            source,
            applied: report.applied.iter().map(|(l, _)| l.clone()).collect(),
        }))
    }

    /// The steps `down` would run, newest first (see [`Migrator::down`]); refuses like it.
    fn down_steps(
        &self,
        history: &[HistoryRow],
        module: Option<&str>,
        steps: Option<usize>,
        to: Option<i64>,
    ) -> Result<Vec<PlannedStep>, MigrateError> {
        let (rows, mut problems) = self.check(history);
        if !problems.is_empty() {
            return Err(problems.remove(0));
        }
        let mut targets: Vec<&Migration> = self
            .set
            .migrations()
            .zip(&rows)
            .filter(|(m, r)| {
                r.state == MigrationState::Applied
                    && m.kind == MigrationKind::Versioned
                    && module.is_none_or(|x| x == m.module)
                    && to.is_none_or(|v| m.version > v)
            })
            .map(|(m, _)| m)
            .collect();
        targets.reverse();
        if to.is_none() {
            targets.truncate(steps.unwrap_or(1));
        }
        targets
            .into_iter()
            .map(|m| {
                let Some(down) = m.down.as_deref() else {
                    return Err(MigrateError::NoDownScript(m.label()));
                };
                let statements = split(down);
                if statements.is_empty() && !is_marked_no_op_down(down) {
                    return Err(MigrateError::EmptyDownScript(m.label()));
                }
                Ok(PlannedStep {
                    migration: m.clone(),
                    statements,
                })
            })
            .collect()
    }

    /// What `down` would revert, newest first, with the down scripts' statements
    /// (verifying first; reverts nothing). Fails like `down` would.
    pub async fn plan_down(
        &self,
        d: &mut dyn MigrationDriver,
        module: Option<&str>,
        steps: Option<usize>,
        to: Option<i64>,
    ) -> Result<Vec<PlannedStep>, MigrateError> {
        let history = d.history().await?;
        self.down_steps(&history, module, steps, to)
    }

    /// Reverts the last `steps` applied versioned migrations (optionally of one module),
    /// or all applied ones above version `to`, newest first, each with its down script.
    /// Fails before reverting anything if one of them has no down script, or a down script
    /// without statements that is not marked `-- larder:no-op-down` (a marked one only
    /// forgets the history row).
    pub async fn down(
        &self,
        d: &mut dyn MigrationDriver,
        module: Option<&str>,
        steps: Option<usize>,
        to: Option<i64>,
    ) -> Result<Report, MigrateError> {
        self.locked(d, async |d| {
            d.ensure_history().await?;
            let history = d.history().await?;
            let steps = self.down_steps(&history, module, steps, to)?;
            let mut report = Report::default();
            for step in steps {
                let m = &step.migration;
                let reverted = &report;
                Self::in_transaction(d, async |d| {
                    Self::run_statements(d, &step, reverted).await?;
                    Ok(d.delete_row(&m.module, m.version, &m.name).await?)
                })
                .await?;
                report.reverted.push(m.label());
            }
            Ok(report)
        })
        .await
    }

    /// Marks an existing schema as migrated: records every versioned migration up to
    /// `to` (of one module, or all) as applied without running it.
    pub async fn baseline(
        &self,
        d: &mut dyn MigrationDriver,
        module: Option<&str>,
        to: i64,
    ) -> Result<Report, MigrateError> {
        self.locked(d, async |d| {
            d.ensure_history().await?;
            let history = d.history().await?;
            let (rows, _) = self.check(&history);
            Self::in_transaction(d, async |d| {
                let mut report = Report::default();
                for (m, r) in self.set.migrations().zip(&rows) {
                    if r.state == MigrationState::Pending
                        && m.kind == MigrationKind::Versioned
                        && m.version <= to
                        && module.is_none_or(|x| x == m.module)
                    {
                        d.upsert_row(&Self::row(m, true, 0)).await?;
                        report.recorded.push(m.label());
                    }
                }
                Ok(report)
            })
            .await
        })
        .await
    }

    /// Resolves a dirty (or unwanted) history row after fixing the schema by hand: deletes
    /// it so the next `up` runs the migration again, or with `mark_applied` records it as
    /// applied with the current file's checksum.
    pub async fn repair(
        &self,
        d: &mut dyn MigrationDriver,
        module: &str,
        version: i64,
        mark_applied: bool,
    ) -> Result<(), MigrateError> {
        self.locked(d, async |d| {
            d.ensure_history().await?;
            let history = d.history().await?;
            let Some(row) = history
                .iter()
                .find(|r| r.module == module && r.version == version)
                .cloned()
            else {
                return Err(MigrateError::NotFound(format!(
                    "no history row for {}/{version}",
                    larder_core::error::quote(module)
                )));
            };
            Self::in_transaction(d, async |d| {
                if mark_applied {
                    let checksum = self
                        .set
                        .find(module, row.kind, version, &row.name)
                        .map_or(row.checksum.clone(), |m| m.checksum.clone());
                    d.upsert_row(&HistoryRow {
                        success: true,
                        checksum,
                        ..row
                    })
                    .await?;
                } else {
                    d.delete_row(module, version, &row.name).await?;
                }
                Ok(())
            })
            .await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::Dialect;
    use crate::migrate::{Module, builtin, source};

    fn history_row(module: &str, version: i64, name: &str, success: bool) -> HistoryRow {
        HistoryRow {
            module: module.to_owned(),
            version,
            name: name.to_owned(),
            kind: MigrationKind::Versioned,
            checksum: "x".to_owned(),
            applied_at: now_rfc3339(),
            execution_ms: 0,
            success,
        }
    }

    fn migrator(modules: Vec<Module>, ignore_missing: bool) -> Migrator {
        Migrator::new(MigrationSet::new(modules).unwrap()).with_options(MigrateOptions {
            ignore_missing,
            ..MigrateOptions::default()
        })
    }

    fn app() -> Module {
        source::parse_module(
            "app",
            &[("2_notx.sql".to_owned(), "SELECT 1;".to_owned())],
            "app/migrations",
        )
        .unwrap()
    }

    #[test]
    fn a_down_script_without_statements_is_refused_unless_marked_no_op() {
        let module = |down: &str| {
            source::parse_module(
                "app",
                &[
                    ("1_a.sql".to_owned(), "CREATE TABLE a (id INT);".to_owned()),
                    ("1_a.down.sql".to_owned(), "DROP TABLE a;".to_owned()),
                    ("2_b.sql".to_owned(), "CREATE TABLE b (id INT);".to_owned()),
                    ("2_b.down.sql".to_owned(), down.to_owned()),
                ],
                "app/migrations",
            )
            .unwrap()
        };
        let applied = |m: &Module| -> Vec<HistoryRow> {
            m.migrations
                .iter()
                .map(|x| HistoryRow {
                    checksum: x.checksum.clone(),
                    ..history_row("app", x.version, &x.name, true)
                })
                .collect()
        };
        for empty in ["", "\n\n", "-- revert app: b\n-- TODO\n", "/* nothing */ ;"] {
            let m = module(empty);
            let history = applied(&m);
            let e = migrator(vec![m], false).down_steps(&history, None, Some(2), None);
            assert!(
                matches!(&e, Err(MigrateError::EmptyDownScript(l)) if l == "app/2_b"),
                "{empty:?}: {e:?}"
            );
            assert!(
                e.unwrap_err()
                    .to_string()
                    .contains("add the line `-- larder:no-op-down`")
            );
        }
        for marked in [
            "-- larder:no-op-down\n",
            "-- revert app: b\n  -- LARDER:NO-OP-DOWN  \n",
        ] {
            let m = module(marked);
            let history = applied(&m);
            let steps = migrator(vec![m], false)
                .down_steps(&history, None, Some(2), None)
                .unwrap();
            let labels: Vec<String> = steps.iter().map(|s| s.migration.label()).collect();
            assert_eq!(labels, ["app/2_b", "app/1_a"], "{marked:?}");
            assert!(steps[0].statements.is_empty());
        }
        // Only the migrations `down` would revert are checked.
        let m = module("-- nothing");
        let history: Vec<HistoryRow> = applied(&m).into_iter().take(1).collect();
        let steps = migrator(vec![m], false)
            .down_steps(&history, None, None, None)
            .unwrap();
        assert_eq!(steps[0].migration.label(), "app/1_a");
    }

    #[test]
    fn a_dirty_row_of_another_module_does_not_stop_the_builtin_module() {
        let history = [
            history_row("app", 1, "ok", true),
            history_row("app", 2, "notx", false),
        ];
        // What `apply_builtin` runs: the built-in module alone, ignoring other modules.
        let only_builtin = migrator(vec![builtin(Dialect::Sqlite)], true);
        let (rows, problems) = only_builtin.check(&history);
        assert!(problems.is_empty(), "{problems:?}");
        // `status` still shows it.
        assert!(
            rows.iter()
                .any(|r| r.name == "notx" && r.state == MigrationState::Dirty)
        );
        // Without `ignore_missing` (a removed module folder) it is reported.
        let strict = migrator(vec![builtin(Dialect::Sqlite)], false);
        let problems = strict.check(&history).1;
        assert!(
            matches!(&problems[..], [MigrateError::Missing { .. }, MigrateError::Dirty { module, .. }] if module == "app"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_dirty_row_of_the_sets_own_module_always_stops_the_run() {
        // With its file present, and with its file gone and `ignore_missing`.
        for (history, ignore_missing) in [
            (vec![history_row("app", 2, "notx", false)], false),
            (vec![history_row("app", 2, "notx", false)], true),
            (vec![history_row("app", 7, "gone", false)], true),
        ] {
            let m = migrator(vec![builtin(Dialect::Postgres), app()], ignore_missing);
            let problems = m.check(&history).1;
            assert!(
                matches!(&problems[..], [MigrateError::Dirty { module, .. }] if module == "app"),
                "{history:?}: {problems:?}"
            );
        }
    }

    #[test]
    fn versions_are_timestamps() {
        let v = timestamp_version().to_string();
        assert_eq!(v.len(), 14);
        assert_eq!(&v[..4], &now_rfc3339()[..4]);
    }

    #[test]
    fn timestamps_and_versions_have_fixed_formats() {
        // (microseconds since the epoch, applied_at, version): the epoch, leap days of a
        // year divisible by 400 and by 4, the day after a century that is not a leap year,
        // the last millisecond of a year (sub-millisecond digits are cut, not rounded).
        for (micros, text, version) in [
            (0, "1970-01-01T00:00:00.000Z", 19_700_101_000_000),
            (
                951_782_400_000_000,
                "2000-02-29T00:00:00.000Z",
                20_000_229_000_000,
            ),
            (
                1_709_210_096_123_456,
                "2024-02-29T12:34:56.123Z",
                20_240_229_123_456,
            ),
            (
                4_107_542_400_000_000,
                "2100-03-01T00:00:00.000Z",
                21_000_301_000_000,
            ),
            (
                946_684_799_999_999,
                "1999-12-31T23:59:59.999Z",
                19_991_231_235_959,
            ),
            (
                1_795_253_400_000_000,
                "2026-11-21T09:30:00.000Z",
                20_261_121_093_000,
            ),
        ] {
            let ts = Timestamp::from_microsecond(micros).unwrap();
            assert_eq!(rfc3339_millis(ts), text);
            assert_eq!(version_at(ts), version, "{text}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T');
    }
}
