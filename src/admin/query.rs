//! The query of `GET /tasks`: which page, how long, and which tasks.

use crate::Phase;
use crate::mode::ModeKind;

/// Tasks per page when `limit` is not given.
pub(super) const DEFAULT_LIMIT: usize = 50;
/// The most tasks one page holds; a larger `limit` is clamped to it.
pub(super) const MAX_LIMIT: usize = 500;

/// A parsed, checked `GET /tasks` query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TasksQuery {
    /// From 1 to [`MAX_LIMIT`].
    pub(super) limit: usize,
    pub(super) cursor: Cursor,
    pub(super) filter: Filter,
}

/// Where a page starts: ids are handed out in schedule order and never
/// reused, so an id marks a place in the list that stays put while tasks
/// before or after it end and new ones (all newer) arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cursor {
    /// The oldest tasks with an id above this (`after=`; 0 for the first page).
    After(u64),
    /// The newest tasks with an id below this (`before=`).
    Before(u64),
}

/// Which tasks the page lists: each `Some` must match (the groups and
/// `in_flight` always count every task).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Filter {
    pub(super) name: Option<String>,
    pub(super) phase: Option<Phase>,
    pub(super) mode: Option<ModeKind>,
    /// `Some(true)` for `running`, `Some(false)` for `queued`.
    pub(super) running: Option<bool>,
}

impl Filter {
    pub(super) fn matches(&self, name: &str, phase: Phase, mode: ModeKind, running: bool) -> bool {
        self.name.as_deref().is_none_or(|wanted| wanted == name)
            && self.phase.is_none_or(|wanted| wanted == phase)
            && self.mode.is_none_or(|wanted| wanted == mode)
            && self.running.is_none_or(|wanted| wanted == running)
    }
}

impl TasksQuery {
    /// Parses `limit`, `after`, `before`, `name`, `phase`, `mode` and
    /// `state` from a URL's query (`application/x-www-form-urlencoded`).
    ///
    /// An empty value counts as absent, as an HTML form sends an empty
    /// field; other parameters are ignored. The error is the message a
    /// `400` carries.
    pub(super) fn parse(raw: Option<&str>) -> Result<Self, String> {
        let mut query = TasksQuery {
            limit: DEFAULT_LIMIT,
            cursor: Cursor::After(0),
            filter: Filter::default(),
        };
        let mut seen: Vec<&str> = Vec::new();
        let (mut after, mut before) = (None, None);
        for pair in raw.unwrap_or("").split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(key).map_err(|()| "a parameter's name is not UTF-8".to_owned())?;
            let Some(known) = KNOWN.iter().copied().find(|known| *known == key) else {
                continue;
            };
            if seen.contains(&known) {
                return Err(format!("{known} is given twice"));
            }
            seen.push(known);
            let value =
                decode(value).map_err(|()| format!("invalid {known}: not UTF-8 once decoded"))?;
            if value.is_empty() {
                continue;
            }
            match known {
                "limit" => query.limit = limit(&value)?,
                "after" => after = Some(id(known, &value)?),
                "before" => before = Some(id(known, &value)?),
                "name" => query.filter.name = Some(value),
                "phase" => query.filter.phase = Some(phase(&value)?),
                "mode" => query.filter.mode = Some(mode(&value)?),
                _ => query.filter.running = Some(state(&value)?),
            }
        }
        query.cursor = match (after, before) {
            (Some(_), Some(_)) => {
                return Err(
                    "give after or before, not both: after=<id> pages towards newer \
                            tasks, before=<id> towards older ones"
                        .into(),
                );
            }
            (Some(after), None) => Cursor::After(after),
            (None, Some(before)) => Cursor::Before(before),
            (None, None) => Cursor::After(0),
        };
        Ok(query)
    }
}

const KNOWN: [&str; 7] = ["limit", "after", "before", "name", "phase", "mode", "state"];

/// A number of tasks, clamped to `1..=MAX_LIMIT`.
fn limit(value: &str) -> Result<usize, String> {
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid limit {value:?}: a number of tasks, as in limit=50 (at most {MAX_LIMIT})"
        ));
    }
    // All digits: only too many of them fails to parse, and that is a lot.
    let asked = value.parse::<usize>().unwrap_or(MAX_LIMIT);
    Ok(asked.clamp(1, MAX_LIMIT))
}

fn id(key: &str, value: &str) -> Result<u64, String> {
    value
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| value.parse::<u64>().ok())
        .flatten()
        .ok_or_else(|| format!("invalid {key} {value:?}: a task id, as in {key}=42"))
}

fn phase(value: &str) -> Result<Phase, String> {
    [Phase::Immediate, Phase::AfterRoute, Phase::AfterResponse]
        .into_iter()
        .find(|phase| phase.as_str() == value)
        .ok_or_else(|| {
            format!("invalid phase {value:?}: one of immediate, after_route, after_response")
        })
}

fn mode(value: &str) -> Result<ModeKind, String> {
    [ModeKind::Async, ModeKind::Sync]
        .into_iter()
        .find(|mode| mode.as_str() == value)
        .ok_or_else(|| format!("invalid mode {value:?}: one of async, sync"))
}

fn state(value: &str) -> Result<bool, String> {
    match value {
        "queued" => Ok(false),
        "running" => Ok(true),
        _ => Err(format!("invalid state {value:?}: one of queued, running")),
    }
}

/// A form-encoded component: `+` is a space, `%XX` a byte (rust-url's
/// percent-encoding; a `%` not followed by two hex digits stays as it is).
fn decode(raw: &str) -> Result<String, ()> {
    if !raw.contains(['+', '%']) {
        return Ok(raw.to_owned());
    }
    percent_encoding::percent_decode_str(&raw.replace('+', " "))
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
        .map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<TasksQuery, String> {
        TasksQuery::parse(Some(raw))
    }

    #[test]
    fn nothing_given_is_the_first_page_of_everything() {
        let expected = TasksQuery {
            limit: DEFAULT_LIMIT,
            cursor: Cursor::After(0),
            filter: Filter::default(),
        };
        assert_eq!(TasksQuery::parse(None), Ok(expected.clone()));
        assert_eq!(parse(""), Ok(expected.clone()));
        assert_eq!(parse("&&limit=&name=&other=1"), Ok(expected));
    }

    #[test]
    fn every_parameter_is_read_and_decoded() {
        let query = parse("limit=7&before=99&name=send+welcome%20%3Cb%3E&phase=after_response&mode=sync&state=queued")
            .unwrap();
        assert_eq!(query.limit, 7);
        assert_eq!(query.cursor, Cursor::Before(99));
        assert_eq!(
            query.filter,
            Filter {
                name: Some("send welcome <b>".into()),
                phase: Some(Phase::AfterResponse),
                mode: Some(ModeKind::Sync),
                running: Some(false),
            }
        );
        assert_eq!(parse("after=5").unwrap().cursor, Cursor::After(5));
        assert_eq!(parse("name=100%25").unwrap().filter.name.unwrap(), "100%");
        assert_eq!(parse("name=%zz%4").unwrap().filter.name.unwrap(), "%zz%4");
    }

    #[test]
    fn limits_are_clamped() {
        for (raw, limit) in [
            ("0", 1),
            ("1", 1),
            ("500", 500),
            ("501", 500),
            ("99999999999999999999999", 500),
        ] {
            assert_eq!(
                parse(&format!("limit={raw}")).unwrap().limit,
                limit,
                "{raw}"
            );
        }
    }

    #[test]
    fn bad_values_name_what_is_expected() {
        for (raw, says) in [
            ("limit=ten", "invalid limit \"ten\": a number of tasks"),
            ("limit=-1", "invalid limit \"-1\""),
            ("after=x", "invalid after \"x\": a task id"),
            ("before=1.5", "invalid before \"1.5\""),
            ("after=99999999999999999999999", "invalid after"),
            (
                "phase=later",
                "one of immediate, after_route, after_response",
            ),
            ("mode=blocking", "one of async, sync"),
            ("state=done", "one of queued, running"),
            ("after=1&before=9", "give after or before, not both"),
            ("limit=1&limit=2", "limit is given twice"),
            ("name=%FF", "invalid name: not UTF-8"),
        ] {
            let error = parse(raw).expect_err(raw);
            assert!(error.contains(says), "{raw}: {error}");
        }
    }
}
