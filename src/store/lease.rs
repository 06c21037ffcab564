//! Who leads: one lease row in PostgreSQL, taken or renewed in one
//! statement, on the database's clock (never a node's). A node holds the
//! lease while it renews it before it runs out; another node takes it only
//! once it has run out, and the term goes up by one then (a fencing
//! token: whatever a node did under an older term is known as the older
//! leader's).

use super::{Store, StoreError};

/// The lease as this node holds it after taking or renewing it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// Raised each time the lease changes hands: a node that finds a term
    /// other than the one it renewed last has just taken the lease.
    pub term: i64,
    /// Who held the lease before the last change of holder (None: nobody
    /// before, or this node itself).
    pub previous: Option<String>,
}

impl Store {
    /// Renews the lease of `process` of `node` for `lease_ms` from now on
    /// the database's clock, or, if `may_take`, takes it once it has run
    /// out (nobody ever holding it, it is taken whatever `may_take` says).
    /// `None`: another holds it (another node, or another process under
    /// this node's name: a restarted one waits for its old lease to run
    /// out), or it ran out and this process may not take it. PostgreSQL
    /// only.
    pub async fn try_lead(
        &self,
        node: &str,
        process: &str,
        lease_ms: i64,
        may_take: bool,
    ) -> Result<Option<Held>, StoreError> {
        // `previous` names who held it before the last change of holder;
        // it changes only when the holder does.
        let row: Option<(i64, Option<String>)> = sqlx::query_as(
            "WITH clock AS (SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint AS ms) \
             INSERT INTO leadership (id, node, process, term, previous, expires_at) \
             SELECT 1, $1, $2, 1, NULL, clock.ms + $3 FROM clock \
             ON CONFLICT (id) DO UPDATE SET \
               term = CASE WHEN leadership.process = EXCLUDED.process THEN leadership.term ELSE leadership.term + 1 END, \
               previous = CASE WHEN leadership.process = EXCLUDED.process THEN leadership.previous ELSE leadership.node END, \
               node = EXCLUDED.node, \
               process = EXCLUDED.process, \
               expires_at = EXCLUDED.expires_at \
             WHERE leadership.process = EXCLUDED.process \
                OR ($4 = 1 AND leadership.expires_at < (SELECT ms FROM clock)) \
             RETURNING term, previous",
        )
        .bind(node)
        .bind(process)
        .bind(lease_ms)
        .bind(i64::from(may_take))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(term, previous)| Held {
            term,
            previous: previous.filter(|p| p != node),
        }))
    }

    /// How long the lease has left on the database's clock, in ms
    /// (negative: it ran out that long ago); None: nobody ever held it.
    /// A standby reads it to see a take-over coming. PostgreSQL only.
    pub async fn lease_left_ms(&self) -> Result<Option<i64>, StoreError> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT expires_at - (extract(epoch from clock_timestamp()) * 1000)::bigint \
             FROM leadership WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(left,)| left))
    }
}
