//! Per-request state: the tasks waiting for their phase, and the order in
//! which the request's tasks start.
//!
//! # Invariants
//!
//! - A task is released when its phase is reached: an immediate task as it
//!   is scheduled, the others when the layer reaches their phase
//!   (after-route before after-response, each in schedule order). Its
//!   limits' permits are requested as it is released, under the `line` lock,
//!   so that they are requested in release order.
//! - Released tasks are handed to their runtime one at a time, in release
//!   order: a task is spawned only once the one released before it holds no
//!   [`Turn`] any more. The turn is given up after an async task's first
//!   poll, just before a sync task's work is called, or when it is dropped
//!   (the task ended without starting); giving it up spawns the next task in
//!   the line, which takes the turn over. So the tasks start in release
//!   order, and none is polled before its turn (no task waits on a waker for
//!   another, whichever worker runs it).
//! - Tasks scheduled once the request has ended (after-response reached)
//!   take no turn: they start at once.

use std::cell::Cell;
use std::fmt;
use std::sync::{Arc, PoisonError};
// The line's lock is loom's in the loom model (see the end of this file).
#[cfg(axum_background_loom)]
use loom::sync::{Mutex, MutexGuard};
#[cfg(not(axum_background_loom))]
use std::sync::{Mutex, MutexGuard};

use http::request::Parts;
use tracing::Span;

use crate::Phase;
use crate::error::RejectReason;
use crate::info::RequestMeta;
use crate::inner::Shared;

/// A request's task on its way to its runtime: asked for its permits when
/// released, handed to its runtime when its turn comes. Boxed while it
/// waits for either; a task released with the turn free is never boxed.
pub(crate) trait Release: Send + 'static {
    /// Requests the task's limits' permits (under the request's lock).
    fn admit(&mut self) -> Result<(), RejectReason>;

    /// Ends a task `admit` refused. Its report runs user code (its error
    /// handler): called once no lock is held.
    fn reject(&self, reason: RejectReason);

    /// Hands the admitted task to its runtime; `turn` (empty for a task
    /// that starts in no order) is given up once it has started.
    fn run(self, shared: &Arc<Shared>, turn: Turn)
    where
        Self: Sized;

    /// `run` for a boxed task.
    fn run_boxed(self: Box<Self>, shared: &Arc<Shared>, turn: Turn);

    /// The task below this one in the [`Stack`] it waits in.
    fn below(&mut self) -> &mut Link;
}

/// A waiting task's link to the one below it.
pub(crate) type Link = Option<Box<dyn Release>>;

/// Waiting tasks, the newest on top, linked through the tasks' own boxes:
/// waiting makes no allocation of its own.
#[derive(Default)]
struct Stack(Link);

impl Stack {
    #[inline]
    fn push(&mut self, mut task: Box<dyn Release>) {
        *task.below() = self.0.take();
        self.0 = Some(task);
    }

    #[inline]
    fn pop(&mut self) -> Option<Box<dyn Release>> {
        let mut top = self.0.take()?;
        self.0 = top.below().take();
        Some(top)
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Moves the tasks onto `onto` one by one, from the top: they end up
    /// there in reverse order, the oldest on top.
    fn pour_onto(&mut self, onto: &mut Stack) {
        while let Some(task) = self.pop() {
            onto.push(task);
        }
    }
}

impl Drop for Stack {
    #[inline]
    fn drop(&mut self) {
        // One task at a time: dropped whole, a long stack would nest a drop
        // per task. (Most stacks are empty when dropped: that is one test.)
        if !self.is_empty() {
            while self.pop().is_some() {}
        }
    }
}

/// One request's background state, shared by the layer's future and body, by
/// every `Tasks` extracted from the request, by the turn, and by the
/// request's tasks (for their `TaskInfo`) until they end.
pub(crate) struct RequestScope {
    pub(crate) shared: Arc<Shared>,
    /// The request's method and path, for its tasks' `TaskInfo`.
    pub(crate) meta: RequestMeta,
    line: Mutex<Line>,
}

#[derive(Default)]
struct Line {
    /// The latest phase reached: tasks of this phase or earlier are released
    /// as they are scheduled.
    reached: Phase,
    /// Tasks waiting for after-route.
    after_route: Stack,
    /// Tasks waiting for after-response.
    after_response: Stack,
    /// Released tasks waiting for the turn, the oldest on top of `next`,
    /// then those of `arrived` from the bottom up (a queue of two stacks).
    next: Stack,
    arrived: Stack,
    /// Whether a released task holds the turn.
    taken: bool,
    /// The span the request was served in, which its tasks follow from;
    /// dropped once the request has ended (tasks outlive the scope's
    /// other users, and a span is closed only once its last handle goes).
    span: Option<Span>,
}

impl Line {
    /// The released task whose turn is next.
    fn pop_next(&mut self) -> Option<Box<dyn Release>> {
        if self.next.is_empty() && !self.arrived.is_empty() {
            let Line { arrived, next, .. } = self;
            arrived.pour_onto(next);
        }
        self.next.pop()
    }
}

impl RequestScope {
    /// A request's scope, made by its first `Tasks` extraction (so requests
    /// that schedule nothing do not pay for it).
    pub(crate) fn new(shared: Arc<Shared>, parts: &Parts) -> Self {
        RequestScope {
            shared,
            meta: RequestMeta::from_parts(parts),
            line: Mutex::new(Line {
                // Read only by task spans, which exist only once a
                // subscriber has been set: without one, not even looked up.
                span: tracing::dispatcher::has_been_set().then(Span::current),
                ..Line::default()
            }),
        }
    }

    /// The id of the span the request was served in, while it is being
    /// served.
    pub(crate) fn span_id(&self) -> Option<tracing::Id> {
        self.lock().span.as_ref().and_then(Span::id)
    }

    /// Releases a task now if `phase` has been reached, else keeps it for
    /// then.
    pub(crate) fn at<R: Release>(self: &Arc<Self>, phase: Phase, mut task: R) {
        let mut line = self.lock();
        if phase > line.reached {
            match phase {
                Phase::AfterRoute => line.after_route.push(Box::new(task)),
                _ => line.after_response.push(Box::new(task)),
            }
            return;
        }
        let admitted = task.admit();
        // Once the request has ended, a task starts at once, in no order.
        let ordered = line.reached < Phase::AfterResponse;
        let turn = match admitted {
            Ok(()) if ordered && line.taken => {
                line.arrived.push(Box::new(task));
                return;
            }
            Ok(()) => {
                line.taken |= ordered;
                Turn(ordered.then(|| Arc::clone(self)))
            }
            Err(reason) => {
                drop(line);
                return task.reject(reason);
            }
        };
        drop(line);
        task.run(&self.shared, turn);
    }

    /// Marks `phase` reached and releases every task waiting for it or for
    /// an earlier phase, in phase order and then schedule order.
    pub(crate) fn reach(self: &Arc<Self>, phase: Phase) {
        let mut line = self.lock();
        if phase <= line.reached {
            return;
        }
        line.reached = phase;
        let ended = phase == Phase::AfterResponse;
        // Dropped once the lock is released: closing a span runs the
        // subscriber's code.
        let request_span = if ended { line.span.take() } else { None };
        if line.after_route.is_empty() && (!ended || line.after_response.is_empty()) {
            // Nothing waits for this phase.
            drop(line);
            drop(request_span);
            return;
        }
        // After-route tasks first, then (once it is reached) after-response
        // ones, each in schedule order; the ones not reached stay.
        // (Poured newest first: the first to be released ends up on top.)
        let mut waiting = Stack::default();
        if ended {
            line.after_response.pour_onto(&mut waiting);
        }
        line.after_route.pour_onto(&mut waiting);
        let mut first = None;
        let mut rejected = Vec::new();
        while let Some(mut task) = waiting.pop() {
            match task.admit() {
                Ok(()) if line.taken => line.arrived.push(task),
                Ok(()) => {
                    line.taken = true;
                    first = Some(task);
                }
                Err(reason) => rejected.push((task, reason)),
            }
        }
        drop(line);
        drop(request_span);
        if let Some(first) = first {
            first.run_boxed(&self.shared, Turn(Some(Arc::clone(self))));
        }
        for (task, reason) in rejected {
            task.reject(reason);
        }
    }

    /// Gives up the turn: the next task in the line takes it over (handed
    /// to its runtime now), or the turn is free.
    fn hand_on(self: Arc<Self>) {
        let mut scope = self;
        loop {
            let next = {
                let mut line = scope.lock();
                let next = line.pop_next();
                line.taken = next.is_some();
                next
            };
            let Some(next) = next else { return };
            let turn = Turn(Some(Arc::clone(&scope)));
            // A task handed to a runtime that is shutting down is dropped
            // inside this call and gives its turn up at once: the turn comes
            // back here, so that a long line is handed on in this loop and
            // not one nested call per task.
            let handing_on = HandingOn::start();
            next.run_boxed(&scope.shared, turn);
            match handing_on.given_back() {
                Some(back) => scope = back,
                None => return,
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Line> {
        // Nothing panics while the lock is held; a poisoned lock still holds
        // consistent data.
        self.line.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for RequestScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = self.lock();
        f.debug_struct("RequestScope")
            .field("reached", &line.reached)
            .field("taken", &line.taken)
            .finish_non_exhaustive()
    }
}

/// The right of a request's released task to be the one starting; see the
/// module's invariants. Given up when dropped. The default is an empty turn
/// (a task outside a request holds none).
#[derive(Default)]
pub(crate) struct Turn(Option<Arc<RequestScope>>);

impl Turn {
    /// Lets the next released task start (nothing, for an empty turn).
    pub(crate) fn pass(self) {}

    /// The turn, leaving an empty one in its place.
    pub(crate) fn take(&mut self) -> Turn {
        Turn(self.0.take())
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(scope) = self.0.take() {
            if let Some(scope) = HandingOn::give_back(scope) {
                scope.hand_on();
            }
        }
    }
}

thread_local! {
    /// Whether this thread is inside `RequestScope::hand_on`'s hand-over.
    static HANDING_ON: Cell<bool> = const { Cell::new(false) };
    /// The turn given up inside that hand-over, for its loop to hand on.
    static GIVEN_BACK: Cell<Option<Arc<RequestScope>>> = const { Cell::new(None) };
}

/// One hand-over of a turn on this thread; ends when dropped (also if the
/// spawn panics). Holds whether the thread was already in one.
struct HandingOn(bool);

impl HandingOn {
    fn start() -> Self {
        HandingOn(HANDING_ON.replace(true))
    }

    /// Keeps a turn given up inside a hand-over, for its loop to hand on;
    /// outside one (or with the place taken, which does not happen: only the
    /// task being handed over holds a turn), hands `scope` back to be handed
    /// on by the caller.
    fn give_back(scope: Arc<RequestScope>) -> Option<Arc<RequestScope>> {
        if !HANDING_ON.get() {
            return Some(scope);
        }
        let mut scope = Some(scope);
        let _ = GIVEN_BACK.try_with(|given| {
            let kept = given.take();
            given.set(if kept.is_none() { scope.take() } else { kept });
        });
        scope
    }

    /// The turn given up during the hand-over, if any.
    fn given_back(self) -> Option<Arc<RequestScope>> {
        GIVEN_BACK.try_with(Cell::take).ok().flatten()
    }
}

impl Drop for HandingOn {
    fn drop(&mut self) {
        HANDING_ON.set(self.0);
    }
}

impl fmt::Debug for Turn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Turn").finish_non_exhaustive()
    }
}

/// A loom model of the turn: a request's tasks released by its handler and
/// its layer while a runtime thread starts them (gives their turns up) and
/// another thread schedules through a `Tasks` clone. Each is handed to its
/// runtime exactly once; the request's own tasks in release order (its
/// immediate tasks in schedule order, then after-route, then
/// after-response); never two holding the turn at once; and the turn is free
/// once all have started. Run by `.ci/run` with
/// `RUSTFLAGS="--cfg axum_background_loom" cargo test --lib loom`.
#[cfg(all(test, axum_background_loom))]
mod loom_model {
    use loom::sync::Mutex;
    use loom::thread;

    use super::*;

    /// What the model's runtime saw.
    #[derive(Default)]
    struct Runtime {
        /// The tasks in the order they were handed over.
        spawned: Vec<usize>,
        /// Turns held by spawned tasks that have not started yet.
        turns: Vec<Turn>,
        /// Whether a task holds the turn (handed over with one, not started).
        holding: bool,
    }

    /// A task that records its hand-over instead of being spawned.
    struct Probe {
        number: usize,
        runtime: std::sync::Arc<Mutex<Runtime>>,
        below: Link,
    }

    impl Release for Probe {
        fn admit(&mut self) -> Result<(), RejectReason> {
            Ok(())
        }

        fn reject(&self, _: RejectReason) {
            unreachable!("the model's tasks are always admitted")
        }

        fn run(self, _: &Arc<Shared>, turn: Turn) {
            let mut runtime = self.runtime.lock().expect("not poisoned");
            runtime.spawned.push(self.number);
            if turn.0.is_some() {
                assert!(!runtime.holding, "two tasks hold the turn");
                runtime.holding = true;
                runtime.turns.push(turn);
            }
        }

        fn run_boxed(self: Box<Self>, shared: &Arc<Shared>, turn: Turn) {
            (*self).run(shared, turn);
        }

        fn below(&mut self) -> &mut Link {
            &mut self.below
        }
    }

    #[test]
    fn loom_tasks_are_handed_over_once_each_in_release_order() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound.get_or_insert(3);
        builder.check(|| {
            // (No blocking detection: its watchdog thread is outside the model.)
            let background = crate::Background::builder().detect_blocking(None).build();
            let parts = http::Request::new(()).into_parts().0;
            let scope = Arc::new(RequestScope::new(Arc::clone(&background.shared), &parts));
            let runtime = std::sync::Arc::new(Mutex::new(Runtime::default()));
            let probe = |number| Probe {
                number,
                runtime: std::sync::Arc::clone(&runtime),
                below: None,
            };
            // The runtime: starts each task holding the turn, which hands
            // the next one over.
            let starter = {
                let runtime = std::sync::Arc::clone(&runtime);
                thread::spawn(move || {
                    loop {
                        let mut held = runtime.lock().expect("not poisoned");
                        if held.spawned.len() == 5 && held.turns.is_empty() {
                            return;
                        }
                        let Some(turn) = held.turns.pop() else {
                            drop(held);
                            thread::yield_now();
                            continue;
                        };
                        held.holding = false;
                        drop(held);
                        turn.pass();
                    }
                })
            };
            // A `Tasks` clone used from another thread.
            let clone = {
                let scope = Arc::clone(&scope);
                let task = probe(4);
                thread::spawn(move || scope.at(Phase::Immediate, task))
            };
            // The handler, then the layer.
            scope.at(Phase::Immediate, probe(0));
            scope.at(Phase::AfterRoute, probe(1));
            scope.at(Phase::Immediate, probe(2));
            scope.at(Phase::AfterResponse, probe(3));
            scope.reach(Phase::AfterRoute);
            scope.reach(Phase::AfterResponse);
            clone.join().expect("clone");
            starter.join().expect("runtime");

            let runtime = runtime.lock().expect("not poisoned");
            let own: Vec<usize> = runtime
                .spawned
                .iter()
                .copied()
                .filter(|n| *n != 4)
                .collect();
            assert_eq!(own, [0, 2, 1, 3], "released order: {:?}", runtime.spawned);
            assert_eq!(runtime.spawned.len(), 5, "each once: {:?}", runtime.spawned);
            assert!(!runtime.holding);
            assert!(
                !scope.lock().taken,
                "the turn is free once all have started"
            );
        });
    }
}
