//! Task names: given (per task, by the task type, by the default config) or
//! derived from a future's or closure's type path when first read.

use std::borrow::Cow;
use std::cell::Cell;

/// The top-level `::`-separated segments of a type path (those inside `<..>`
/// stay whole), without allocating: names are derived on every `schedule`.
struct Segments<'a> {
    rest: Option<&'a str>,
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        let bytes = rest.as_bytes();
        let mut depth = 0usize;
        for i in 0..bytes.len() {
            match bytes[i] {
                b'<' => depth += 1,
                b'>' => depth = depth.saturating_sub(1),
                b':' if depth == 0 && bytes.get(i + 1) == Some(&b':') => {
                    self.rest = Some(&rest[i + 2..]);
                    return Some(&rest[..i]);
                }
                _ => {}
            }
        }
        self.rest = None;
        Some(rest)
    }
}

fn segments(path: &str) -> Segments<'_> {
    Segments { rest: Some(path) }
}

/// `app::tasks::Welcome` → `Welcome`; generic arguments are kept.
pub(crate) fn short_type_name(path: &'static str) -> &'static str {
    segments(path).last().unwrap_or(path)
}

/// A task's name: given (per task, by its type, by the default config), or
/// derived from its type path when first read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum TaskName {
    Given(Cow<'static, str>),
    Derived(&'static str),
}

impl TaskName {
    /// `==`, with a pointer comparison first: the names a thread sees again
    /// are usually the very same strings.
    #[cfg(feature = "metrics")]
    pub(crate) fn same(&self, other: &TaskName) -> bool {
        let (mine, theirs) = match (self, other) {
            (TaskName::Given(a), TaskName::Given(b)) => (&**a, &**b),
            (TaskName::Derived(a), TaskName::Derived(b)) => (*a, *b),
            _ => return false,
        };
        std::ptr::eq(mine, theirs) || mine == theirs
    }

    pub(crate) fn get(&self) -> Cow<'static, str> {
        match self {
            TaskName::Given(name) => name.clone(),
            TaskName::Derived(path) => Cow::Borrowed(derived_name_again(path)),
        }
    }
}

/// [`derived_name`], remembered per thread for the last path asked: a
/// shutdown report or an admin listing reads the names of many tasks of
/// one type in a row.
fn derived_name_again(path: &'static str) -> &'static str {
    thread_local! {
        static LAST: Cell<Option<(&'static str, &'static str)>> = const { Cell::new(None) };
    }
    let same =
        |seen: &'static str| std::ptr::eq(seen.as_ptr(), path.as_ptr()) && seen.len() == path.len();
    LAST.try_with(|last| match last.get() {
        Some((seen, name)) if same(seen) => name,
        _ => {
            let name = derived_name(path);
            last.set(Some((path, name)));
            name
        }
    })
    .unwrap_or_else(|_| derived_name(path))
}

/// `app::send_audit::{{closure}}` → `send_audit`;
/// `app::register::{{closure}}::{{closure}}` → `register`.
pub(crate) fn derived_name(path: &'static str) -> &'static str {
    let name = segments(path)
        .filter(|s| !s.starts_with('{') && !s.starts_with('<'))
        .last()
        .unwrap_or(path);
    // `send::<u32>` or `Foo<T>`: the name is what precedes the generics.
    name.split('<')
        .next()
        .unwrap_or(name)
        .trim_end_matches("::")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_drop_the_module_path() {
        assert_eq!(short_type_name("app::tasks::Welcome"), "Welcome");
        assert_eq!(short_type_name("Welcome"), "Welcome");
        assert_eq!(
            short_type_name("app::Wrap<app::inner::Job>"),
            "Wrap<app::inner::Job>"
        );
    }

    #[test]
    fn derived_names_name_the_function() {
        assert_eq!(derived_name("app::send_audit::{{closure}}"), "send_audit");
        assert_eq!(
            derived_name("app::handlers::register::{{closure}}::{{closure}}"),
            "register"
        );
        assert_eq!(derived_name("app::send::<u32>::{{closure}}"), "send");
        assert_eq!(derived_name("core::future::Ready<()>"), "Ready");
    }

    #[test]
    fn real_async_fn_and_closure_names() {
        async fn send_audit() {}
        fn closure_in_here() -> &'static str {
            fn name_of<T>(_: &T) -> &'static str {
                derived_name(std::any::type_name::<T>())
            }
            name_of(&|| ())
        }
        fn name_of<T>(_: &T) -> &'static str {
            derived_name(std::any::type_name::<T>())
        }
        assert_eq!(name_of(&send_audit()), "send_audit");
        assert_eq!(closure_in_here(), "closure_in_here");
    }
}
