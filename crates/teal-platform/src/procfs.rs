//! Reading `/proc`: is a pid still the process we started?
//!
//! Adopted instances are not our children, so we cannot wait for them; we poll
//! `/proc/<pid>/stat` instead. Its start time (field 22) tells a reused pid apart from
//! the process we started.

/// The parts of `/proc/<pid>/stat` the platform uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// Field 3: `R`, `S`, `Z` (exited, not yet reaped), ...
    pub state: char,
    /// Field 5: its process group.
    pub group: u32,
    /// Field 22: when the process started, in clock ticks since boot.
    pub start_time: u64,
}

impl ProcStat {
    /// It has exited (a zombie has: only its parent has not collected it yet).
    fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads `/proc/<pid>/stat`; None when there is no such process.
pub(crate) fn stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // Field 2 is the command name in parentheses; it may contain spaces and ')', so
    // the remaining fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3, so field N is fields[N - 3].
    let state = fields.first()?.chars().next()?;
    let group = fields.get(5 - 3)?.parse().ok()?;
    let start_time = fields.get(22 - 3)?.parse().ok()?;
    Some(ProcStat {
        state,
        group,
        start_time,
    })
}

/// The process `pid` exists, is the one that started at `start_time`, and has not
/// exited (a zombie has exited; only its parent has not collected it yet).
pub(crate) fn is_running(pid: u32, start_time: u64) -> bool {
    matches!(stat(pid), Some(s) if s.start_time == start_time && !s.exited())
}

/// Whether some process of the process group `pgid` has not exited.
pub(crate) fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let pid = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok());
        pid.and_then(stat)
            .is_some_and(|stat| stat.group == pgid && !stat.exited())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_name_with_spaces_and_parens() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                group: 4242,
                start_time: 987654
            })
        );
    }

    #[test]
    fn reads_the_process_group() {
        let line =
            "4243 (sleep) S 4242 4200 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let stat = parse_stat(line).unwrap();
        assert_eq!((stat.group, stat.exited()), (4200, false));
        let line = "4244 (sh) Z 1 4200 4200 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let stat = parse_stat(line).unwrap();
        assert_eq!((stat.group, stat.exited()), (4200, true));
    }

    #[test]
    fn reads_this_process() {
        let me = stat(std::process::id()).expect("our own stat");
        assert!(is_running(std::process::id(), me.start_time));
        assert!(!is_running(std::process::id(), me.start_time + 1));
    }
}
