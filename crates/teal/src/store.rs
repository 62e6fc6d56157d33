//! The SQLite store: rollouts, revisions, the audit trail and analysis templates.
//!
//! Every mutation runs in one transaction and is committed before the API answers.
//! WAL with `synchronous=FULL`: a committed change survives a crash of the daemon (and
//! of the machine).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use teal_core::analysis::{AnalysisRun, Phase as AnalysisPhase};
use teal_core::api::{HistoryEntry, RevisionView};
use teal_core::rollout::{AnalysisKind, Revision, Status};
use teal_core::spec::{AnalysisTemplateSpec, RolloutSpec, Template};

/// Schema migrations, applied in order; `PRAGMA user_version` counts the applied ones.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE rollouts (
        name        TEXT PRIMARY KEY,
        spec        TEXT NOT NULL,
        status      TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    );
    CREATE TABLE revisions (
        rollout        TEXT NOT NULL,
        revision       INTEGER NOT NULL,
        template       TEXT NOT NULL,
        template_hash  TEXT NOT NULL,
        source         TEXT NOT NULL,
        created_at     INTEGER NOT NULL,
        PRIMARY KEY (rollout, revision)
    );
    CREATE TABLE events (
        id       INTEGER PRIMARY KEY AUTOINCREMENT,
        rollout  TEXT NOT NULL,
        at       INTEGER NOT NULL,
        cause    TEXT NOT NULL,
        message  TEXT NOT NULL
    );
    CREATE INDEX events_by_rollout ON events (rollout, id);
    CREATE TABLE analysis_templates (
        name        TEXT PRIMARY KEY,
        spec        TEXT NOT NULL,
        updated_at  INTEGER NOT NULL
    );
",
    "
    ALTER TABLE analysis_templates ADD COLUMN typed TEXT;
    CREATE TABLE analysis_runs (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        rollout      TEXT NOT NULL,
        kind         TEXT NOT NULL,
        revision     INTEGER NOT NULL,
        since        INTEGER NOT NULL,
        phase        TEXT NOT NULL,
        message      TEXT,
        run          TEXT NOT NULL,
        started_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        UNIQUE (rollout, kind, revision, since)
    );
    CREATE INDEX analysis_runs_by_rollout ON analysis_runs (rollout, id);
",
];

/// One stored analysis run.
#[derive(Clone, Debug)]
pub struct StoredRun {
    /// Its id, in the order runs started.
    pub id: i64,
    /// Pre- or post-promotion.
    pub kind: AnalysisKind,
    /// The revision analysed.
    pub revision: Revision,
    /// When the state machine asked for it (with kind and revision, its identity).
    pub since: u64,
    /// Its phase; `Running` until it ends.
    pub phase: AnalysisPhase,
    /// Why it ended as it did.
    pub message: Option<String>,
    /// Every metric and measurement.
    pub run: AnalysisRun,
    /// When it last changed.
    pub updated_at: u64,
}

/// A stored rollout.
#[derive(Clone, Debug)]
pub struct StoredRollout {
    /// The spec last applied.
    pub spec: RolloutSpec,
    /// What teal has decided.
    pub status: Status,
    /// When the status last changed.
    pub updated_at: u64,
}

/// The daemon's database. Calls are short and synchronous; one connection behind a
/// mutex is plenty for one machine's rollouts.
pub struct Store {
    connection: Mutex<Connection>,
}

impl Store {
    /// Opens (creating and migrating) `teal.db` in `data_dir`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Store> {
        let path = data_dir.join("teal.db");
        let mut connection = Connection::open(&path)
            .with_context(|| format!("cannot open the store {}", path.display()))?;
        connection
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
            )
            .context("cannot configure the store")?;
        migrate(&mut connection)
            .with_context(|| format!("cannot migrate the store {}", path.display()))?;
        Ok(Store {
            connection: Mutex::new(connection),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (the transaction is
        // rolled back when dropped), so the poison flag carries no information.
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `change` in one transaction, committed before this returns.
    pub fn write<T>(
        &self,
        change: impl FnOnce(&Writer<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        let result = change(&Writer { tx: &transaction })?;
        transaction.commit().context("cannot commit to the store")?;
        Ok(result)
    }

    /// Every rollout, by name.
    pub fn rollouts(&self) -> anyhow::Result<Vec<(String, StoredRollout)>> {
        let connection = self.lock();
        let mut statement = connection
            .prepare("SELECT name, spec, status, updated_at FROM rollouts ORDER BY name")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })?;
        let mut rollouts = Vec::new();
        for row in rows {
            let (name, spec, status, updated_at) = row?;
            rollouts.push((name, decode_rollout(&spec, &status, updated_at)?));
        }
        Ok(rollouts)
    }

    /// One rollout.
    pub fn rollout(&self, name: &str) -> anyhow::Result<Option<StoredRollout>> {
        let connection = self.lock();
        read_rollout(&connection, name)
    }

    /// The template of one revision.
    pub fn template(&self, rollout: &str, revision: Revision) -> anyhow::Result<Option<Template>> {
        let connection = self.lock();
        read_template(&connection, rollout, revision)
    }

    /// An analysis template, typed. None if never applied (or applied by a teal too old
    /// to store it typed: apply it again).
    pub fn analysis_template(&self, name: &str) -> anyhow::Result<Option<AnalysisTemplateSpec>> {
        let connection = self.lock();
        let typed: Option<Option<String>> = connection
            .query_row(
                "SELECT typed FROM analysis_templates WHERE name = ?1",
                [name],
                |row| row.get(0),
            )
            .optional()?;
        typed
            .flatten()
            .map(|t| serde_json::from_str(&t).context("a stored analysis template is unreadable"))
            .transpose()
    }

    /// The run of `kind` for `revision` asked for at `since`, if it was started.
    pub fn analysis_run(
        &self,
        rollout: &str,
        kind: AnalysisKind,
        revision: Revision,
        since: u64,
    ) -> anyhow::Result<Option<StoredRun>> {
        let connection = self.lock();
        let mut runs = read_runs(
            &connection,
            "rollout = ?1 AND kind = ?2 AND revision = ?3 AND since = ?4",
            params![rollout, kind_name(kind), revision as i64, since as i64],
        )?;
        Ok(runs.pop())
    }

    /// A rollout's runs, oldest first; only those of `revision` when given.
    pub fn analysis_runs(
        &self,
        rollout: &str,
        revision: Option<Revision>,
    ) -> anyhow::Result<Vec<StoredRun>> {
        let connection = self.lock();
        match revision {
            Some(revision) => read_runs(
                &connection,
                "rollout = ?1 AND revision = ?2",
                params![rollout, revision as i64],
            ),
            None => read_runs(&connection, "rollout = ?1", params![rollout]),
        }
    }

    /// Stores a run's progress (creating it the first time); returns its id.
    pub fn put_analysis_run(
        &self,
        rollout: &str,
        kind: AnalysisKind,
        revision: Revision,
        since: u64,
        run: &AnalysisRun,
        now: u64,
    ) -> anyhow::Result<i64> {
        let connection = self.lock();
        let id = connection.query_row(
            "INSERT INTO analysis_runs (rollout, kind, revision, since, phase, message, run, started_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (rollout, kind, revision, since)
             DO UPDATE SET phase = ?5, message = ?6, run = ?7, updated_at = ?9
             RETURNING id",
            params![
                rollout,
                kind_name(kind),
                revision as i64,
                since as i64,
                run.phase().as_str(),
                run.message(),
                serde_json::to_string(run)?,
                run.started_at as i64,
                now as i64
            ],
            |row| row.get(0),
        )?;
        Ok(id)
    }

    /// Revisions, oldest first.
    pub fn revisions(&self, rollout: &str) -> anyhow::Result<Vec<RevisionView>> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT revision, template, template_hash, source, created_at FROM revisions
             WHERE rollout = ?1 ORDER BY revision",
        )?;
        let rows = statement.query_map([rollout], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, i64>(4)?,
            ))
        })?;
        let mut revisions = Vec::new();
        for row in rows {
            let (revision, template, template_hash, source, created_at) = row?;
            let template: Template =
                serde_json::from_str(&template).context("a stored template is unreadable")?;
            revisions.push(RevisionView {
                revision: revision as u64,
                template_hash,
                created_at_ms: created_at as u64,
                source,
                command: template
                    .process
                    .command
                    .iter()
                    .chain(&template.process.args)
                    .cloned()
                    .collect(),
            });
        }
        Ok(revisions)
    }

    /// The audit trail of one rollout, oldest first.
    pub fn events(&self, rollout: &str) -> anyhow::Result<Vec<HistoryEntry>> {
        let connection = self.lock();
        let mut statement = connection
            .prepare("SELECT at, cause, message FROM events WHERE rollout = ?1 ORDER BY id")?;
        let rows = statement.query_map([rollout], |row| {
            Ok(HistoryEntry {
                at_ms: row.get::<_, i64>(0)? as u64,
                rollout: rollout.to_owned(),
                cause: row.get(1)?,
                message: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Writes inside one transaction.
pub struct Writer<'a> {
    tx: &'a Transaction<'a>,
}

impl Writer<'_> {
    /// One rollout, as of this transaction.
    pub fn rollout(&self, name: &str) -> anyhow::Result<Option<StoredRollout>> {
        read_rollout(self.tx, name)
    }

    /// The template of one revision, as of this transaction.
    pub fn template(&self, rollout: &str, revision: Revision) -> anyhow::Result<Option<Template>> {
        read_template(self.tx, rollout, revision)
    }

    /// Creates or replaces a rollout's spec and status.
    pub fn put_rollout(&self, spec: &RolloutSpec, status: &Status, now: u64) -> anyhow::Result<()> {
        self.tx.execute(
            "INSERT INTO rollouts (name, spec, status, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (name) DO UPDATE SET spec = ?2, status = ?3, updated_at = ?4",
            params![spec.name, serde_json::to_string(spec)?, serde_json::to_string(status)?, now as i64],
        )?;
        Ok(())
    }

    /// Records a new revision.
    pub fn put_revision(
        &self,
        rollout: &str,
        revision: Revision,
        template: &Template,
        source: &str,
        now: u64,
    ) -> anyhow::Result<()> {
        self.tx.execute(
            "INSERT INTO revisions (rollout, revision, template, template_hash, source, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                rollout,
                revision as i64,
                serde_json::to_string(template)?,
                template.hash(),
                source,
                now as i64
            ],
        )?;
        Ok(())
    }

    /// Adds entries to the audit trail.
    pub fn record(
        &self,
        rollout: &str,
        cause: &str,
        messages: &[String],
        now: u64,
    ) -> anyhow::Result<()> {
        for message in messages {
            self.tx.execute(
                "INSERT INTO events (rollout, at, cause, message) VALUES (?1, ?2, ?3, ?4)",
                params![rollout, now as i64, cause, message],
            )?;
        }
        Ok(())
    }

    /// Removes a rollout and its revisions; its audit trail stays.
    pub fn delete_rollout(&self, name: &str) -> anyhow::Result<()> {
        self.tx
            .execute("DELETE FROM rollouts WHERE name = ?1", [name])?;
        self.tx
            .execute("DELETE FROM revisions WHERE rollout = ?1", [name])?;
        Ok(())
    }

    /// Creates or replaces an analysis template; true when it changed.
    pub fn put_analysis_template(
        &self,
        template: &AnalysisTemplateSpec,
        now: u64,
    ) -> anyhow::Result<bool> {
        let spec = serde_json::to_string(&template.spec)?;
        let typed = serde_json::to_string(template)?;
        let old: Option<Option<String>> = self
            .tx
            .query_row(
                "SELECT typed FROM analysis_templates WHERE name = ?1",
                [&template.name],
                |row| row.get(0),
            )
            .optional()?;
        if old.flatten().as_deref() == Some(typed.as_str()) {
            return Ok(false);
        }
        self.tx.execute(
            "INSERT INTO analysis_templates (name, spec, typed, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET spec = ?2, typed = ?3, updated_at = ?4",
            params![template.name, spec, typed, now as i64],
        )?;
        Ok(true)
    }

    /// True when an analysis template of this name was applied.
    pub fn has_analysis_template(&self, name: &str) -> anyhow::Result<bool> {
        Ok(self
            .tx
            .query_row(
                "SELECT 1 FROM analysis_templates WHERE name = ?1",
                [name],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}

fn migrate(connection: &mut Connection) -> anyhow::Result<()> {
    let applied: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
        let transaction = connection.transaction()?;
        transaction.execute_batch(migration)?;
        transaction.pragma_update(None, "user_version", index as i64 + 1)?;
        transaction.commit()?;
    }
    Ok(())
}

fn read_rollout(connection: &Connection, name: &str) -> anyhow::Result<Option<StoredRollout>> {
    let row = connection
        .query_row(
            "SELECT spec, status, updated_at FROM rollouts WHERE name = ?1",
            [name],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                ))
            },
        )
        .optional()?;
    row.map(|(spec, status, updated_at)| decode_rollout(&spec, &status, updated_at))
        .transpose()
}

fn read_template(
    connection: &Connection,
    rollout: &str,
    revision: Revision,
) -> anyhow::Result<Option<Template>> {
    let template: Option<String> = connection
        .query_row(
            "SELECT template FROM revisions WHERE rollout = ?1 AND revision = ?2",
            params![rollout, revision as i64],
            |row| row.get(0),
        )
        .optional()?;
    template
        .map(|t| serde_json::from_str(&t).context("a stored template is unreadable"))
        .transpose()
}

fn decode_rollout(spec: &str, status: &str, updated_at: i64) -> anyhow::Result<StoredRollout> {
    Ok(StoredRollout {
        spec: serde_json::from_str(spec).context("a stored spec is unreadable")?,
        status: serde_json::from_str(status).context("a stored status is unreadable")?,
        updated_at: updated_at as u64,
    })
}

fn kind_name(kind: AnalysisKind) -> &'static str {
    match kind {
        AnalysisKind::PrePromotion => "pre-promotion",
        AnalysisKind::PostPromotion => "post-promotion",
    }
}

fn read_runs(
    connection: &Connection,
    filter: &str,
    params: impl rusqlite::Params,
) -> anyhow::Result<Vec<StoredRun>> {
    let mut statement = connection.prepare(&format!(
        "SELECT id, kind, revision, since, message, run, updated_at FROM analysis_runs
         WHERE {filter} ORDER BY id"
    ))?;
    let rows = statement.query_map(params, |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, i64>(3)?,
            row.get::<_, Option<String>>(4)?,
            row.get::<_, String>(5)?,
            row.get::<_, i64>(6)?,
        ))
    })?;
    let mut runs = Vec::new();
    for row in rows {
        let (id, kind, revision, since, message, run, updated_at) = row?;
        let run: AnalysisRun =
            serde_json::from_str(&run).context("a stored analysis run is unreadable")?;
        runs.push(StoredRun {
            id,
            kind: if kind == "post-promotion" {
                AnalysisKind::PostPromotion
            } else {
                AnalysisKind::PrePromotion
            },
            revision: revision as Revision,
            since: since as u64,
            phase: run.phase(),
            message,
            run,
            updated_at: updated_at as u64,
        });
    }
    Ok(runs)
}
