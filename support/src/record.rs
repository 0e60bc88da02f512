//! Where a component's changes are recorded. The binary that runs a
//! component hands it the ledger's recorder (`bpi_ledger::service::
//! LedgerRecorder`), so the runtime crates need not depend on the ledger;
//! offline tools and tests hand [`NotRecorded`].

/// A sink for change records.
pub trait Recorder: Send + Sync {
    /// Records one change (category, action, data); the outcome as one line
    /// for the caller's log. Recording never fails the change it records:
    /// the change has happened, and the line says whether it was recorded.
    fn record(&self, category: &str, action: &str, data: &serde_json::Value) -> String;
}

/// For planning offline and for tests: nothing is recorded, and the outcome says so.
pub struct NotRecorded;

impl Recorder for NotRecorded {
    fn record(&self, _: &str, _: &str, _: &serde_json::Value) -> String {
        "not recorded (no ledger here)".into()
    }
}
