//! Per-request state: the tasks waiting for their phase, and the order in
//! which the request's tasks start.
//!
//! # Invariants
//!
//! - Tickets are numbered from 0 in the order tasks are released: immediate
//!   tasks as they are scheduled, the others when their phase is reached
//!   (after-route before after-response, each in schedule order). A ticket is
//!   issued, and the task's limits' permits are requested, under the
//!   `pending` lock, so that both happen in that order.
//! - A task whose ticket is `k` starts (its [`TaskCell::try_start`](crate::cell::TaskCell))
//!   only once `next == k`, and `next` moves past `k` only when ticket `k` is
//!   passed: after its task's first poll (async) or just before its work is
//!   called (sync), or when it is dropped unused (the task ended without
//!   starting). So every ticket is passed exactly once, in number order.
//! - Tasks scheduled once the request has ended (after-response reached)
//!   get no ticket: they start at once.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use http::request::Parts;
use tracing::Span;

use crate::Phase;
use crate::info::RequestMeta;
use crate::inner::Shared;

/// A task waiting for its phase. Called under the request's lock with its
/// `Background` and its ticket, it requests its permits and hands the task to
/// its mode; a task it could not admit comes back, to be reported once the
/// lock is released.
pub(crate) type Deferred =
    Box<dyn FnOnce(&Arc<Shared>, Option<Ticket>) -> Result<(), Rejection> + Send>;

/// A task refused at its start (its end already claimed), whose report runs
/// user code and so waits until no lock is held.
pub(crate) struct Rejection(pub(crate) Box<dyn FnOnce() + Send>);

/// One request's background state, shared by the layer's future and body and
/// by every `Tasks` extracted from the request.
pub(crate) struct RequestScope {
    pub(crate) shared: Arc<Shared>,
    /// The span the request was served in; tasks follow from it.
    pub(crate) span: Span,
    /// The request's method and path, for its tasks' `TaskInfo`.
    meta: Arc<RequestMeta>,
    pending: Mutex<Pending>,
    /// The ticket whose task may start next. Written only under `gate`'s
    /// lock; read without it on the fast path (`Acquire`, paired with the
    /// `Release` store in `Ticket::pass`: whatever the previous task did to
    /// start happens before the next one starts).
    next: AtomicU32,
    gate: Mutex<Gate>,
}

#[derive(Default)]
struct Pending {
    /// The latest phase reached: tasks of this phase or earlier start at once.
    reached: Phase,
    /// Tasks waiting for their phase (after-route or after-response), in
    /// schedule order: one list, so that a request with tasks in both
    /// phases makes one allocation for them. `None` once released.
    deferred: Vec<(Phase, Option<Deferred>)>,
    /// Tickets issued so far.
    issued: u32,
}

/// Tickets passed out of turn, and tasks waiting for theirs.
#[derive(Default)]
struct Gate {
    /// Dropped unused before their turn (their tasks ended unstarted).
    passed_early: Vec<u32>,
    /// `(ticket, waker)` of runners waiting for their turn.
    waiting: Vec<(u32, Waker)>,
}

impl RequestScope {
    /// A request's scope, made by its first `Tasks` extraction (so requests
    /// that schedule nothing do not pay for it).
    pub(crate) fn new(shared: Arc<Shared>, parts: &Parts) -> Self {
        RequestScope {
            shared,
            // Read only by task spans, which exist only once a subscriber
            // has been set: without one, not even looked up.
            span: if tracing::dispatcher::has_been_set() {
                Span::current()
            } else {
                Span::none()
            },
            meta: Arc::new(RequestMeta::from_parts(parts)),
            pending: Mutex::new(Pending::default()),
            next: AtomicU32::new(0),
            gate: Mutex::new(Gate::default()),
        }
    }

    pub(crate) fn request_meta(&self) -> Arc<RequestMeta> {
        Arc::clone(&self.meta)
    }

    /// Starts a task now if `phase` has been reached, else keeps it for then.
    ///
    /// Started with the lock held, here and in `reach`: starting only
    /// requests permits and hands the task to tokio (no user code runs; a
    /// rejection is reported after the lock is released), and holding the
    /// lock gives tickets and permits out in release order.
    pub(crate) fn at<F>(self: &Arc<Self>, phase: Phase, start: F)
    where
        F: FnOnce(&Arc<Shared>, Option<Ticket>) -> Result<(), Rejection> + Send + 'static,
    {
        let mut pending = self.lock();
        if phase > pending.reached {
            pending.deferred.push((phase, Some(Box::new(start))));
            return;
        }
        // Once the request has ended, a task starts at once, in no order.
        let ticket = (pending.reached < Phase::AfterResponse).then(|| self.issue(&mut pending));
        let started = start(&self.shared, ticket);
        drop(pending);
        if let Err(Rejection(report)) = started {
            report();
        }
    }

    /// Marks `phase` reached and starts every task waiting for it or for an
    /// earlier phase, in phase order and then schedule order.
    pub(crate) fn reach(self: &Arc<Self>, phase: Phase) {
        let mut pending = self.lock();
        if phase <= pending.reached {
            return;
        }
        pending.reached = phase;
        if pending.deferred.is_empty() {
            // Nothing waits (the request scheduled nothing for later).
            return;
        }
        // After-route tasks first, then (once it is reached) after-response
        // ones, each in schedule order; the ones not reached stay.
        let mut deferred = std::mem::take(&mut pending.deferred);
        let mut rejected = Vec::new();
        for released in [Phase::AfterRoute, Phase::AfterResponse] {
            if released > phase {
                break;
            }
            for (at, start) in &mut deferred {
                if let Some(start) = start.take_if(|_| *at == released) {
                    let ticket = self.issue(&mut pending);
                    if let Err(rejection) = start(&self.shared, Some(ticket)) {
                        rejected.push(rejection);
                    }
                }
            }
        }
        deferred.retain(|(_, start)| start.is_some());
        pending.deferred = deferred;
        drop(pending);
        for Rejection(report) in rejected {
            report();
        }
    }

    fn issue(self: &Arc<Self>, pending: &mut Pending) -> Ticket {
        let number = pending.issued;
        pending.issued = pending.issued.wrapping_add(1);
        Ticket {
            scope: Arc::clone(self),
            number,
            passed: false,
        }
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        // Nothing panics while the lock is held.
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Nothing panics while the lock is held; a poisoned lock still holds
        // consistent data.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for RequestScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pending = self.lock();
        f.debug_struct("RequestScope")
            .field("reached", &pending.reached)
            .field("deferred", &pending.deferred.len())
            .finish()
    }
}

/// A task's place in its request's start order; see the module's invariants.
/// Dropped unused, it lets the tasks after it go on.
pub(crate) struct Ticket {
    scope: Arc<RequestScope>,
    number: u32,
    passed: bool,
}

impl Ticket {
    /// Ready once every task released before this one has started (or ended
    /// without starting).
    pub(crate) fn poll_turn(&self, cx: &mut Context<'_>) -> Poll<()> {
        let scope = &self.scope;
        if scope.next.load(Ordering::Acquire) == self.number {
            return Poll::Ready(());
        }
        let mut gate = scope.gate();
        // `next` only moves under this lock: checked again, it cannot move
        // before the waker is in place.
        if scope.next.load(Ordering::Acquire) == self.number {
            return Poll::Ready(());
        }
        match gate.waiting.iter_mut().find(|(n, _)| *n == self.number) {
            Some((_, waker)) => waker.clone_from(cx.waker()),
            None => gate.waiting.push((self.number, cx.waker().clone())),
        }
        Poll::Pending
    }

    /// Lets the next task start (now, if this was its turn; else once the
    /// tasks before this one have started).
    pub(crate) fn pass(mut self) {
        self.pass_once();
    }

    fn pass_once(&mut self) {
        if std::mem::replace(&mut self.passed, true) {
            return;
        }
        let scope = &self.scope;
        let mut gate = scope.gate();
        gate.waiting.retain(|(n, _)| *n != self.number);
        // Relaxed: `next` is written only under the gate's lock, held here.
        let mut next = scope.next.load(Ordering::Relaxed);
        if next != self.number {
            gate.passed_early.push(self.number);
            return;
        }
        next = next.wrapping_add(1);
        while let Some(i) = gate.passed_early.iter().position(|n| *n == next) {
            gate.passed_early.swap_remove(i);
            next = next.wrapping_add(1);
        }
        // Release: see `RequestScope::next`.
        scope.next.store(next, Ordering::Release);
        let woken = gate
            .waiting
            .iter()
            .position(|(n, _)| *n == next)
            .map(|i| gate.waiting.swap_remove(i).1);
        drop(gate);
        if let Some(waker) = woken {
            waker.wake();
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pass_once();
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("number", &self.number)
            .field("passed", &self.passed)
            .finish()
    }
}
