//! Admission: the only way in. Every `schedule` registers its task, then
//! starts it now, defers it to its phase, or rejects it.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::Phase;
use crate::cell::{NewTask, TaskCell};
use crate::end::{self, RunnerGuard};
use crate::error::RejectReason;
use crate::handle::TaskHandle;
use crate::inner::Shared;
use crate::limits::Admission;
use crate::mode::Mode;
use crate::name::TaskName;
use crate::options::TaskOptions;
use crate::request::{Link, Release, RequestScope, Turn};
use crate::run::{self, Extras, Job};
use crate::task::{Attempts, IntoBackgroundTask, Once, Rerunnable};

/// Schedules a task that runs once.
pub(crate) fn once<T, M>(
    shared: &Arc<Shared>,
    task: T,
    scope: Option<&Arc<RequestScope>>,
    phase: Option<Phase>,
    options: &TaskOptions,
) -> TaskHandle
where
    T: IntoBackgroundTask<M>,
{
    #[cfg(feature = "_durable")]
    let kept = crate::durable::Kept::of(shared, &task);
    let source = TaskSource {
        own_name: task.own_name(),
        type_path: T::type_path(),
        attempts: Once::new(task.into_work()),
        retrying: false,
        admission: Admission::Standard,
    };
    let handle = admit::<T::Mode, _>(shared, source, scope, phase, options);
    #[cfg(feature = "_durable")]
    if let Some(kept) = kept {
        kept.watch(shared, handle.clone());
    }
    handle
}

/// Schedules a task that may run again, under its config's retry policy.
pub(crate) fn rerunnable<T, M>(
    shared: &Arc<Shared>,
    task: T,
    scope: Option<&Arc<RequestScope>>,
    phase: Option<Phase>,
    options: &TaskOptions,
) -> TaskHandle
where
    T: Rerunnable<M>,
{
    #[cfg(feature = "_durable")]
    let kept = crate::durable::Kept::of(shared, &task);
    let source = rerunnable_source(task, Admission::Standard);
    let handle = admit::<T::Mode, _>(shared, source, scope, phase, options);
    #[cfg(feature = "_durable")]
    if let Some(kept) = kept {
        kept.watch(shared, handle.clone());
    }
    handle
}

/// Schedules work already committed to (a job taken out of a durable
/// store): like a rerunnable task, but admitted during shutdown and never
/// rejected by a full `max_in_flight` (it waits).
#[cfg(feature = "_plugins")]
pub(crate) fn committed<T, M>(shared: &Arc<Shared>, task: T, options: &TaskOptions) -> TaskHandle
where
    T: Rerunnable<M>,
{
    let source = rerunnable_source(task, Admission::Committed);
    admit::<T::Mode, _>(shared, source, None, None, options)
}

/// A task on its way in: its names and its attempts.
struct TaskSource<A> {
    own_name: Option<Cow<'static, str>>,
    type_path: &'static str,
    attempts: A,
    /// Whether the route taken allows retries (the task can run again).
    retrying: bool,
    admission: Admission,
}

fn rerunnable_source<T: Rerunnable<M>, M>(
    task: T,
    admission: Admission,
) -> TaskSource<impl Attempts> {
    TaskSource {
        own_name: task.own_name(),
        type_path: T::type_path(),
        attempts: task.into_attempts(),
        retrying: true,
        admission,
    }
}

/// Registers the task, then starts it now or when its phase comes, or
/// rejects it.
///
/// `phase` is the scheduler's, if it chose one (see `TaskOptions::resolve`).
fn admit<Md: Mode, A: Attempts>(
    shared: &Arc<Shared>,
    source: TaskSource<A>,
    scope: Option<&Arc<RequestScope>>,
    phase: Option<Phase>,
    options: &TaskOptions,
) -> TaskHandle {
    // The task's own key (a default config's would make every task one),
    // and its own flow.
    let key = options.unique.clone();
    let flow_key = options.flow.clone();
    let options = options.resolve(&shared.default_config, source.own_name, phase);
    let name = match options.name {
        Some(name) => TaskName::Given(name),
        None => TaskName::Derived(source.type_path),
    };
    let new_task = NewTask {
        name,
        phase: options.phase,
        mode: Md::KIND,
        shielded: options.shield,
        unique: key.is_some(),
        request: scope.map(Arc::clone),
        on_error: options.on_error,
    };
    let cell = match key {
        None => register(shared, new_task),
        Some(key) => {
            let claimed = shared.unique.claim_or(
                key,
                |id| shared.registry.get(id),
                || {
                    let cell = register(shared, new_task);
                    (cell.id, cell)
                },
            );
            match claimed {
                Ok(cell) => cell,
                Err(holder) => {
                    tracing::debug!(
                        task.id = %holder.id,
                        task.name = %holder.name(),
                        "a task with this unique key is in flight: its handle is returned"
                    );
                    return TaskHandle::duplicate(holder);
                }
            }
        }
    };
    let handle = TaskHandle::new(Arc::clone(&cell));
    let admission = source.admission;
    let runtime = match shared.runtime() {
        Some(_) if shared.is_closing() && admission == Admission::Standard => {
            Err(RejectReason::ShuttingDown)
        }
        Some(runtime) => Ok(runtime),
        None => Err(RejectReason::NoRuntime),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(reason) => {
            end::rejected(shared, &cell, reason);
            return handle;
        }
    };

    let start = options.start;
    // Only looked up when flows are registered: other services pay nothing.
    let flow = if shared.flows.is_empty() {
        None
    } else {
        let name = cell.name();
        let key = flow_key.as_deref().unwrap_or(&name);
        shared.flows.get(key).cloned()
    };
    let span = tracing::dispatcher::has_been_set()
        .then(|| task_span(&cell, scope))
        .flatten();
    let job = Job {
        guard: RunnerGuard {
            shared: Arc::clone(shared),
            cell,
        },
        attempts: source.attempts,
        extras: {
            let retry = options.retry.filter(|_| source.retrying);
            let bounded =
                retry.is_some() || options.timeout.is_some() || start.is_some() || flow.is_some();
            bounded.then(|| {
                Box::new(Extras {
                    retry,
                    timeout: options.timeout,
                    start,
                    due: None,
                    flow,
                })
            })
        },
        admission,
        slot: None,
        turn: Turn::default(),
        span: span.map(Box::new),
    };
    match scope {
        // Released when its phase comes, started in the request's order.
        Some(scope) => scope.at(
            options.phase,
            Released::<Md, _> {
                job,
                below: None,
                mode: PhantomData,
            },
        ),
        None => {
            let mut job = job;
            match admit_job(&mut job) {
                Ok(()) => run::start::<Md, _>(runtime, job),
                Err(reason) => end::rejected(shared, &job.guard.cell, reason),
            }
        }
    }
    handle
}

/// Makes the task's cell and registers it. Registered before `closing` is
/// checked: shutdown sets `closing` before it reads the registry, so a task
/// either is seen by shutdown or sees `closing` at its admission.
#[inline(always)]
fn register(shared: &Arc<Shared>, task: NewTask) -> Arc<TaskCell> {
    // The id is taken here: a unique task's duplicate takes none.
    let cell = shared.cells.cell(shared, task, shared.registry.next_id());
    shared.registry.insert(&cell);
    cell.metrics.scheduled();
    cell
}

/// Requests the task's limits' permits; a delayed task's are asked for
/// when it falls due, a flow's task's when its flow lets it go.
#[inline(always)]
fn admit_job<A>(job: &mut Job<A>) -> Result<(), RejectReason> {
    if let Some(extras) = job.extras.as_deref_mut() {
        if let Some(start) = extras.start {
            // Its time counts from now.
            let due = start.due(tokio::time::Instant::now());
            job.guard.cell.set_due(due);
            extras.due = Some(due);
            return Ok(());
        }
    }
    if job.flow().is_none() {
        job.slot = job.guard.shared.limits.admit(job.admission)?;
    }
    Ok(())
}

/// A request's task on its way to its mode: its permits are requested as
/// it is released, then it is handed to its runtime in its turn.
struct Released<Md, A> {
    job: Job<A>,
    /// The task below it where it waits (see `request.rs`).
    below: Link,
    mode: PhantomData<fn() -> Md>,
}

impl<Md: Mode, A: Attempts> Release for Released<Md, A> {
    fn admit(&mut self) -> Result<(), RejectReason> {
        admit_job(&mut self.job)
    }

    fn reject(&self, reason: RejectReason) {
        let guard = &self.job.guard;
        end::rejected(&guard.shared, &guard.cell, reason);
    }

    fn run(mut self, shared: &Arc<Shared>, turn: Turn) {
        self.job.turn = turn;
        // No runtime cannot happen here (checked at admission); were it so,
        // dropping the job would end the task as cancelled.
        if let Some(runtime) = shared.runtime() {
            run::start::<Md, _>(runtime, self.job);
        }
    }

    fn run_boxed(self: Box<Self>, shared: &Arc<Shared>, turn: Turn) {
        (*self).run(shared, turn);
    }

    fn below(&mut self) -> &mut Link {
        &mut self.below
    }
}

/// The task's `background_task` span (DEBUG), following from its request's;
/// `None` when it is disabled.
///
/// Called only once a subscriber has been set: without one nothing can see
/// the span, so it is not even built (with `tracing`'s `log` feature,
/// building it would format its fields for `log`).
fn task_span(cell: &TaskCell, scope: Option<&Arc<RequestScope>>) -> Option<tracing::Span> {
    let span = tracing::debug_span!(
        "background_task",
        id = %cell.id,
        name = %cell.name(),
        phase = %cell.phase,
        mode = %cell.mode,
    );
    if span.is_disabled() {
        return None;
    }
    // A request's span, while the request is served; else (no request, or
    // a `Tasks` kept past the response) the span the task is scheduled in.
    match scope.and_then(|scope| scope.span_id()) {
        Some(request) => span.follows_from(request),
        None => span.follows_from(tracing::Span::current()),
    };
    Some(span)
}
