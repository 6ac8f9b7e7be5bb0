//! `TTL`, `PTTL`, `EXPIRETIME` and `PEXPIRETIME`: a key's expiry as Redis tells it, from the
//! entry's `expires_at_ms` (the absolute expiry the writer put in the record). `-2` for a key
//! this replica does not hold (or holds no more: it expired), `-1` for one without expiry.

/// Which of the four commands, and so which unit and which reference point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// `TTL`: seconds left, rounded to the nearest as Redis does.
    Ttl,
    /// `PTTL`: milliseconds left.
    Pttl,
    /// `EXPIRETIME`: the Unix time of the expiry, in seconds.
    ExpireTime,
    /// `PEXPIRETIME`: the same in milliseconds.
    PexpireTime,
}

/// The integer reply to `asked` for a key that is `None` (absent) or present with
/// `expires_at_ms`, at `now_ms`. A present key has not expired (reads never see it after).
pub fn reply(asked: Asked, key: Option<Option<u64>>, now_ms: u64) -> i64 {
    let Some(expires_at_ms) = key else {
        return -2;
    };
    let Some(at) = expires_at_ms else {
        return -1;
    };
    let at = i64::try_from(at).unwrap_or(i64::MAX);
    let left = at
        .saturating_sub(i64::try_from(now_ms).unwrap_or(i64::MAX))
        .max(0);
    match asked {
        // Redis: (ttl + 500) / 1000.
        Asked::Ttl => left.saturating_add(500) / 1000,
        Asked::Pttl => left,
        Asked::ExpireTime => at / 1000,
        Asked::PexpireTime => at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn an_absent_key_is_minus_two_and_a_key_without_expiry_minus_one() {
        for asked in [
            Asked::Ttl,
            Asked::Pttl,
            Asked::ExpireTime,
            Asked::PexpireTime,
        ] {
            assert_eq!(reply(asked, None, NOW), -2, "{asked:?}");
            assert_eq!(reply(asked, Some(None), NOW), -1, "{asked:?}");
        }
    }

    #[test]
    fn an_expiring_key_tells_what_is_left_and_when_it_ends() {
        let at = Some(NOW + 59_600);
        assert_eq!(reply(Asked::Pttl, Some(at), NOW), 59_600);
        assert_eq!(
            reply(Asked::Ttl, Some(at), NOW),
            60,
            "rounded as Redis rounds"
        );
        assert_eq!(reply(Asked::Ttl, Some(Some(NOW + 1_499)), NOW), 1);
        assert_eq!(reply(Asked::ExpireTime, Some(at), NOW), 1_700_000_059);
        assert_eq!(reply(Asked::PexpireTime, Some(at), NOW), 1_700_000_059_600);
    }

    #[test]
    fn a_clock_past_the_expiry_never_gives_a_negative_time_left() {
        assert_eq!(reply(Asked::Pttl, Some(Some(NOW - 5)), NOW), 0);
        assert_eq!(reply(Asked::Ttl, Some(Some(NOW - 5)), NOW), 0);
    }
}
