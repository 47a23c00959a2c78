//! Which stored version a version reference names, for pulls and web
//! downloads alike: `@N`, `@latest-N` against the latest number, and a
//! point in time (`@2026-11-30T12:00:00Z`, our extension) through the
//! metadata's [`crate::server::store::Meta::version_at`].
//!
//! Every refusal is the same 404 a missing version always was, with a
//! message saying which version was not there, except a version a
//! retention policy pruned: 410, saying when and by which policy (the
//! number existed and stays taken). A point in time passes over pruned
//! versions to the last kept one before it.

use axum::http::StatusCode;

use super::app::{AppState, Refusal};
use super::store::prune::VersionPruned;
use super::store::{ReplicaRow, VersionRow};
use crate::wire::{VersionRef, instant_text};

/// The version `vref` names in `r`, or a 404 saying why there is none.
pub fn version_for(st: &AppState, r: &ReplicaRow, vref: VersionRef) -> Result<VersionRow, Refusal> {
    let latest = st.store.replica_state(r).latest().map_or(0, |f| f.number);
    if latest == 0 {
        return Err(Refusal::new(
            StatusCode::NOT_FOUND,
            "the replica has no versions yet",
        ));
    }
    let found = match vref {
        VersionRef::At(t) => st.store.meta().version_at(r, &instant_text(&t)),
        other => match other.resolve(latest) {
            Some(n) => st.store.meta().version(r, n),
            None => {
                return Err(Refusal::new(
                    StatusCode::NOT_FOUND,
                    format!("no version {vref} (latest is {latest})"),
                ));
            }
        },
    };
    match found {
        Ok(Some(v)) => match VersionPruned::of(&v) {
            Some(pruned) => Err(Refusal::new(StatusCode::GONE, pruned.to_string())),
            None => Ok(v),
        },
        Ok(None) => Err(Refusal::new(
            StatusCode::NOT_FOUND,
            match vref {
                VersionRef::At(_) => {
                    format!("no version was committed at or before {vref} (latest is {latest})")
                }
                _ => "no such version".to_string(),
            },
        )),
        Err(e) => Err(Refusal::internal(e)),
    }
}
