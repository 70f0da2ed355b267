//! A CronJob's `schedule` as Kubernetes reads it (the CronJob controller and its validation
//! use robfig/cron's standard parser: five fields, `*` `?` ranges steps lists, month and day
//! names, `@hourly`-style descriptors and `@every <duration>`; `TZ=` in the schedule is
//! refused, the timeZone field says it), and the longest wait between two runs, so that
//! `credentials cronjob` can refuse a schedule slower than the tokens it keeps alive. Sans-IO.

use std::time::Duration;

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// `@every <duration>`.
    Every(Duration),
    Fields(Fields),
}

/// The five fields as bit sets; `dom_star`/`dow_star`: the field was written `*` or `?`
/// (cron then matches a day by both day fields, else by either).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    minute: u64,
    hour: u64,
    dom: u64,
    month: u64,
    dow: u64,
    dom_star: bool,
    dow_star: bool,
}

const MONTHS: &[&str] = &[
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One field's bounds and names (`names[i]` is `first + i`).
struct Bounds {
    what: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    first: u32,
}

const MINUTE: Bounds = Bounds {
    what: "minute",
    min: 0,
    max: 59,
    names: &[],
    first: 0,
};
const HOUR: Bounds = Bounds {
    what: "hour",
    min: 0,
    max: 23,
    names: &[],
    first: 0,
};
const DOM: Bounds = Bounds {
    what: "day of month",
    min: 1,
    max: 31,
    names: &[],
    first: 0,
};
const MONTH: Bounds = Bounds {
    what: "month",
    min: 1,
    max: 12,
    names: MONTHS,
    first: 1,
};
const DOW: Bounds = Bounds {
    what: "day of week",
    min: 0,
    max: 6,
    names: DAYS,
    first: 0,
};

/// Parses `spec` as Kubernetes does, or says why it would refuse it.
pub fn parse(spec: &str) -> Result<Schedule, String> {
    let spec = spec.trim();
    if spec.contains("TZ") {
        return Err(
            "cannot use TZ or CRON_TZ in a schedule (Kubernetes refuses it; the \
                    CronJob's timeZone field sets the zone)"
                .into(),
        );
    }
    if let Some(d) = spec.strip_prefix('@') {
        return descriptor(d);
    }
    let f: Vec<&str> = spec.split_whitespace().collect();
    if f.len() != 5 {
        return Err(format!(
            "expected five cron fields (minute hour day-of-month month day-of-week), found {}",
            f.len()
        ));
    }
    let (dom, dom_star) = field(f[2], &DOM)?;
    let (dow, dow_star) = field(f[4], &DOW)?;
    Ok(Schedule::Fields(Fields {
        minute: field(f[0], &MINUTE)?.0,
        hour: field(f[1], &HOUR)?.0,
        dom,
        month: field(f[3], &MONTH)?.0,
        dow,
        dom_star,
        dow_star,
    }))
}

fn descriptor(d: &str) -> Result<Schedule, String> {
    let five = match d {
        "yearly" | "annually" => "0 0 1 1 *",
        "monthly" => "0 0 1 * *",
        "weekly" => "0 0 * * 0",
        "daily" | "midnight" => "0 0 * * *",
        "hourly" => "0 * * * *",
        _ => {
            let Some(every) = d.strip_prefix("every ") else {
                return Err(format!("unrecognized descriptor @{d}"));
            };
            let every = humantime::parse_duration(every.trim())
                .map_err(|e| format!("@every {every:?}: {e}"))?;
            // The controller runs a shorter interval every second.
            return Ok(Schedule::Every(every.max(Duration::from_secs(1))));
        }
    };
    parse(five)
}

/// One field: a comma list of `*`/`?`, `N`, `N-M`, each with an optional `/step` (`N/step`
/// runs from N to the field's end). Returns its bits and whether it was written as a star.
fn field(text: &str, b: &Bounds) -> Result<(u64, bool), String> {
    let (mut bits, mut star) = (0u64, false);
    for expr in text.split(',') {
        let (range, step) = match expr.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (expr, None),
        };
        let bad = |why: &str| format!("{} {expr:?}: {why}", b.what);
        let (mut start, mut end, mut this_star) = if range == "*" || range == "?" {
            (b.min, b.max, true)
        } else {
            match range.split_once('-') {
                Some((lo, hi)) => (
                    value(lo, b).map_err(|e| bad(&e))?,
                    value(hi, b).map_err(|e| bad(&e))?,
                    false,
                ),
                None => {
                    let v = value(range, b).map_err(|e| bad(&e))?;
                    (v, v, false)
                }
            }
        };
        let step = match step {
            None => 1,
            Some(s) => {
                if s.contains('/') {
                    return Err(bad("too many slashes"));
                }
                if !range.contains('-') && !this_star {
                    end = b.max;
                }
                let n = digits(s).ok_or_else(|| bad("the step is not a number"))?;
                if n > 1 {
                    this_star = false;
                }
                n
            }
        };
        if start < b.min {
            return Err(bad(&format!("below {}", b.min)));
        }
        if end > b.max {
            return Err(bad(&format!("beyond {}", b.max)));
        }
        if start > end {
            return Err(bad("the range starts after it ends"));
        }
        if step == 0 {
            return Err(bad("a step must be positive"));
        }
        while start <= end {
            bits |= 1 << start;
            start += step;
        }
        star |= this_star;
    }
    Ok((bits, star))
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn value(s: &str, b: &Bounds) -> Result<u32, String> {
    let lower = s.to_ascii_lowercase();
    if let Some(i) = b.names.iter().position(|n| *n == lower) {
        return Ok(b.first + i as u32);
    }
    if s.contains('-') {
        return Err("too many hyphens".into());
    }
    digits(s).ok_or_else(|| format!("{s:?} is not a number"))
}

/// The longest wait between two runs over nine years from 2024-01-01 (UTC: two leap days,
/// every weekday on every date), or `None` when it runs less than twice in them.
pub fn longest_gap(s: &Schedule) -> Option<Duration> {
    let f = match s {
        Schedule::Every(d) => return Some(*d),
        Schedule::Fields(f) => f,
    };
    let (mut prev, mut longest): (Option<u64>, u64) = (None, 0);
    let mut day_index = 0u64;
    // 2024-01-01 was a Monday.
    let mut dow = 1u32;
    for year in 2024..2033u32 {
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        for month in 1..=12u32 {
            let days = match month {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            for day in 1..=days {
                if f.month & (1 << month) != 0 && day_matches(f, day, dow) {
                    for hour in (0..24).filter(|h| f.hour & (1 << h) != 0) {
                        for minute in (0..60).filter(|m| f.minute & (1 << m) != 0) {
                            let t = day_index * 1440 + hour * 60 + minute;
                            if let Some(p) = prev {
                                longest = longest.max(t - p);
                            }
                            prev = Some(t);
                        }
                    }
                }
                day_index += 1;
                dow = (dow + 1) % 7;
            }
        }
    }
    (longest > 0).then(|| Duration::from_secs(longest * 60))
}

fn day_matches(f: &Fields, day: u32, dow: u32) -> bool {
    let (d, w) = (f.dom & (1 << day) != 0, f.dow & (1 << dow) != 0);
    if f.dom_star || f.dow_star {
        d && w
    } else {
        d || w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap(spec: &str) -> Option<Duration> {
        longest_gap(&parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}")))
    }
    const MIN: u64 = 60;
    const HOUR: u64 = 3600;
    const DAY: u64 = 86400;

    #[test]
    fn the_longest_wait_between_runs() {
        assert_eq!(gap("17 * * * *"), Some(Duration::from_secs(HOUR)));
        assert_eq!(gap("*/10 * * * *"), Some(Duration::from_secs(10 * MIN)));
        // 0, 25, 50: the wait from :50 to the next :00 is the 10 minutes.
        assert_eq!(gap("*/25 * * * *"), Some(Duration::from_secs(25 * MIN)));
        assert_eq!(gap("0 0,6 * * *"), Some(Duration::from_secs(18 * HOUR)));
        assert_eq!(
            gap("0 9-17 * * MON-FRI"),
            Some(Duration::from_secs(64 * HOUR))
        );
        assert_eq!(gap("@hourly"), Some(Duration::from_secs(HOUR)));
        assert_eq!(gap("@daily"), Some(Duration::from_secs(DAY)));
        assert_eq!(gap("@weekly"), Some(Duration::from_secs(7 * DAY)));
        assert_eq!(gap("@every 90m"), Some(Duration::from_secs(90 * MIN)));
        // Day of month or day of week when both are restricted; both when one is a star.
        assert_eq!(gap("0 0 1 * MON"), Some(Duration::from_secs(7 * DAY)));
        assert_eq!(gap("0 0 * * 1"), Some(Duration::from_secs(7 * DAY)));
        assert_eq!(gap("0 0 ? * 1"), Some(Duration::from_secs(7 * DAY)));
        // A step over a star is no star any more: both day fields must match.
        assert_eq!(gap("0 0 */2 * 1"), gap("0 0 1-31/2 * 1"));
        // February 29th: every four years, beyond a year.
        assert_eq!(gap("0 0 29 2 *"), Some(Duration::from_secs(1461 * DAY)));
        // Never (February 30th), or names and single values with steps.
        assert_eq!(gap("0 0 30 2 *"), None);
        assert_eq!(gap("0 0 1 jan,JUL *"), Some(Duration::from_secs(184 * DAY)));
        // 50 and 55 past each hour: from :55 to the next :50.
        assert_eq!(gap("50/5 * * * *"), Some(Duration::from_secs(55 * MIN)));
    }

    #[test]
    fn what_kubernetes_refuses_is_refused() {
        for bad in [
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 7",
            "5-1 * * * *",
            "*/0 * * * *",
            "1-2-3 * * * *",
            "*/5/2 * * * *",
            "a * * * *",
            "1,,2 * * * *",
            "-1 * * * *",
            "TZ=UTC 0 * * * *",
            "CRON_TZ=Europe/Berlin 0 * * * *",
            "@fortnightly",
            "@every soon",
            "L * * * *",
            "0 0 15W * *",
            "0 0 * * 5#3",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
