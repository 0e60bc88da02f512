//! Group commit: one thread owns the store's appends. Callers queue drafts and
//! block until theirs is durable; the thread takes everything queued, writes it
//! with one write and one fdatasync, and answers each caller. Under load the
//! cost of a sync is shared by every append waiting for it.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::block::Draft;
use crate::error::{LedgerError, Result};
use crate::store::{OpenReport, Receipt, Store, StoreOptions};

/// The most drafts one sync covers; bounds a batch's latency and memory.
const MAX_BATCH: usize = 8192;
/// How often, at most, a new signed checkpoint is written while appends flow.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

struct Request {
    draft: Draft,
    reply: mpsc::SyncSender<Result<Receipt>>,
}

/// A ledger open for appending, shared by threads (the D-Bus service, tests).
pub struct Ledger {
    store: Arc<Mutex<Store>>,
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

impl Ledger {
    pub fn open(opts: StoreOptions) -> Result<(Ledger, OpenReport)> {
        let (store, report) = Store::open(opts)?;
        let store = Arc::new(Mutex::new(store));
        let (tx, rx) = mpsc::channel::<Request>();
        let shared = store.clone();
        let committer = std::thread::Builder::new()
            .name("ledger-commit".into())
            .spawn(move || commit_loop(&shared, rx))
            .map_err(|e| LedgerError::io("starting the commit thread", e))?;
        let ledger = Ledger { store, tx: Mutex::new(Some(tx)), committer: Mutex::new(Some(committer)) };
        Ok((ledger, report))
    }

    /// Appends one draft; returns once it is durable.
    pub fn append(&self, draft: Draft) -> Result<Receipt> {
        self.submit(draft).wait()
    }

    /// Queues one draft and returns at once; [`Pending::wait`] returns when
    /// it is durable. One caller can keep many appends in flight (as an async
    /// server does with concurrent calls), and they share syncs.
    pub fn submit(&self, draft: Draft) -> Pending {
        let (reply, rx) = mpsc::sync_channel(1);
        let sent = match &*self.tx.lock().expect("ledger sender lock") {
            Some(tx) => tx.send(Request { draft, reply }).is_ok(),
            None => false,
        };
        Pending { rx: sent.then_some(rx) }
    }

    /// The store, for queries. Held briefly: appends wait while it is held.
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().expect("ledger store lock")
    }

    /// Stops taking appends, finishes the queued ones and writes a final checkpoint.
    pub fn close(&self) -> Result<()> {
        self.tx.lock().expect("ledger sender lock").take();
        if let Some(h) = self.committer.lock().expect("committer lock").take() {
            let _ = h.join();
        }
        self.store().checkpoint().map(|_| ())
    }
}

/// An append on its way to disk.
pub struct Pending {
    rx: Option<mpsc::Receiver<Result<Receipt>>>,
}

impl Pending {
    /// Blocks until the append is durable (or failed).
    pub fn wait(self) -> Result<Receipt> {
        match self.rx {
            None => Err(LedgerError::Poisoned("the ledger is closed".into())),
            Some(rx) => rx.recv().unwrap_or_else(|_| Err(LedgerError::Poisoned("the commit thread stopped".into()))),
        }
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn commit_loop(store: &Mutex<Store>, rx: mpsc::Receiver<Request>) {
    let mut last_checkpoint = Instant::now();
    let mut drafts: Vec<Draft> = Vec::new();
    let mut replies = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(r) = next.take() {
            drafts.push(r.draft);
            replies.push(r.reply);
            if drafts.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        let mut s = store.lock().expect("ledger store lock");
        let results = s.append_batch(&drafts);
        if last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            if let Err(e) = s.checkpoint() {
                bpi_support::progress::note(&format!("ledger: writing a checkpoint failed: {e}"));
            }
            last_checkpoint = Instant::now();
        }
        drop(s);
        drafts.clear();
        for (reply, result) in replies.drain(..).zip(results) {
            let _ = reply.send(result);
        }
    }
}
