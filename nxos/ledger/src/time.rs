//! UTC timestamps for people: blocks carry seconds since the epoch; the CLI
//! shows and accepts `YYYY-MM-DDTHH:MM:SSZ` (or plain seconds).

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (the civil-from-days algorithm of H. Hinnant).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn fmt_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Seconds since the epoch, or `YYYY-MM-DDTHH:MM:SSZ`, or `YYYY-MM-DD`.
pub fn parse_utc(text: &str) -> Result<u64, String> {
    if let Ok(n) = text.parse::<u64>() {
        return Ok(n);
    }
    let bad = || format!("{text:?} is not seconds since the epoch or YYYY-MM-DD[THH:MM:SSZ]");
    let (date, time) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z').ok_or_else(bad)?)),
        None => (text, None),
    };
    let num = |s: &str| s.parse::<u32>().map_err(|_| bad());
    let dp: Vec<&str> = date.split('-').collect();
    let [y, m, d] = dp[..] else { return Err(bad()) };
    let (y, m, d) = (num(y)?, num(m)?, num(d)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || y < 1970 {
        return Err(bad());
    }
    let (hh, mm, ss) = match time {
        None => (0, 0, 0),
        Some(t) => {
            let tp: Vec<&str> = t.split(':').collect();
            let [h, mi, s] = tp[..] else { return Err(bad()) };
            let (h, mi, s) = (num(h)?, num(mi)?, num(s)?);
            if h > 23 || mi > 59 || s > 60 {
                return Err(bad());
            }
            (h, mi, s)
        }
    };
    let days = days_from_civil(i64::from(y), m, d);
    Ok(days as u64 * 86_400 + u64::from(hh * 3600 + mm * 60 + ss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(fmt_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(fmt_utc(1_705_312_200), "2024-01-15T09:50:00Z");
        assert_eq!(fmt_utc(951_782_400), "2000-02-29T00:00:00Z");
        for t in [0u64, 59, 86_399, 951_782_400, 1_705_312_200, 4_102_444_800] {
            assert_eq!(parse_utc(&fmt_utc(t)).unwrap(), t);
        }
        assert_eq!(parse_utc("2024-01-15").unwrap(), 1_705_276_800);
        assert_eq!(parse_utc("1705312200").unwrap(), 1_705_312_200);
        for bad in ["2024-13-01", "yesterday", "2024-01-15T25:00:00Z", "2024-01-15T09:50:00"] {
            assert!(parse_utc(bad).is_err(), "{bad}");
        }
    }
}
