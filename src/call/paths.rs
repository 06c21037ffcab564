//! Where a call's recording lives: `YYYY/MM/DD/<call id>.wav` (UTC date of
//! arrival), so a day's recordings can be archived as one folder.

use crate::ids::CallId;
use std::path::PathBuf;

/// Civil date (UTC) of a time in milliseconds since the epoch.
pub fn civil_date(ms: i64) -> (i64, u32, u32) {
    // Howard Hinnant's days-to-civil algorithm.
    let days = ms.div_euclid(86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

pub fn recording_path(arrived_ms: i64, call: &CallId) -> PathBuf {
    let (y, m, d) = civil_date(arrived_ms);
    PathBuf::from(format!("{y:04}/{m:02}/{d:02}/{call}.wav"))
}

/// A warm transfer's consultation, beside the call's own recording.
pub fn transfer_recording_path(arrived_ms: i64, call: &CallId, seq: u32) -> PathBuf {
    let (y, m, d) = civil_date(arrived_ms);
    PathBuf::from(format!("{y:04}/{m:02}/{d:02}/{call}-transfer-{seq}.wav"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(951_782_400_000), (2000, 2, 29));
        assert_eq!(civil_date(1_795_305_600_000), (2026, 11, 22));
        assert_eq!(civil_date(-1), (1969, 12, 31));
        assert_eq!(
            recording_path(1_795_305_600_000, &CallId("abc".into())),
            PathBuf::from("2026/11/22/abc.wav")
        );
    }
}
