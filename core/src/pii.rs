//! Recipients as logs show them: enough to tell two apart and to see a provider's pattern (a
//! country code, a mail domain), never the whole phone number, address or device token.
//! `tracing::debug!(to = %Masked(&envelope.to), ...)`; nothing allocates unless the line is written.

use std::fmt;

/// Displays a recipient masked: `+821012345678` → `+8210****5678`, `kim@example.com` →
/// `k***@example.com`, a device token or any other id → its first and last 4 characters.
#[derive(Clone, Copy, Debug)]
pub struct Masked<'a>(pub &'a str);

/// Whether `to` already has a mask's shape (an erased person's recipient, kept masked): masking
/// it again shows it as it is, which tells no more than the mask did.
fn already_masked(to: &str) -> bool {
    if let Some(rest) = to.strip_prefix('+') {
        // `+`, digits, stars, digits: no phone number has stars.
        let head = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        let stars = head.trim_start_matches('*');
        return stars.len() < head.len() && stars.bytes().all(|b| b.is_ascii_digit());
    }
    if let Some((local, _)) = to.rsplit_once('@') {
        let mut chars = local.chars();
        return chars.next().is_some_and(|c| c != '*') && chars.as_str() == "***" || local == "***";
    }
    let chars: Vec<char> = to.chars().collect();
    to == "***" || (chars.len() == 11 && chars[4..7] == ['*', '*', '*'])
}

impl fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to = self.0;
        if already_masked(to) {
            return f.write_str(to);
        }
        if let Some(digits) = to.strip_prefix('+')
            && !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
        {
            // Up to 4 digits either side, never more than a third of the number each.
            let shown = (digits.len() / 3).min(4);
            let hidden = digits.len() - 2 * shown;
            return write!(
                f,
                "+{}{}{}",
                &digits[..shown],
                "*".repeat(hidden),
                &digits[digits.len() - shown..]
            );
        }
        if let Some((local, domain)) = to.rsplit_once('@') {
            let first = local.chars().next().map(String::from).unwrap_or_default();
            return write!(f, "{first}***@{domain}");
        }
        let chars: Vec<char> = to.chars().collect();
        if chars.len() >= 16 {
            let head: String = chars[..4].iter().collect();
            let tail: String = chars[chars.len() - 4..].iter().collect();
            write!(f, "{head}***{tail}")
        } else {
            f.write_str("***")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(to: &str) -> String {
        Masked(to).to_string()
    }

    #[test]
    fn phone_numbers_keep_the_country_code_and_the_last_digits() {
        assert_eq!(masked("+821012345678"), "+8210****5678");
        assert_eq!(masked("+15005550006"), "+150*****006");
        // The shortest E.164 numbers still hide more than they show.
        assert_eq!(masked("+1234567"), "+12***67");
    }

    #[test]
    fn emails_keep_the_first_letter_and_the_domain() {
        assert_eq!(masked("kim@example.com"), "k***@example.com");
        assert_eq!(masked("민수@예시.한국"), "민***@예시.한국");
        assert_eq!(masked("@example.com"), "***@example.com");
    }

    #[test]
    fn tokens_and_ids_keep_only_their_ends() {
        let token = "1111222233334444555566667777888899990000aaaabbbbccccddddeeeeffff";
        assert_eq!(masked(token), "1111***ffff");
        assert_eq!(masked("customer-42"), "***");
        assert_eq!(masked(""), "***");
    }

    #[test]
    fn a_mask_masked_again_stays_as_it_was() {
        for to in [
            "+821012345678",
            "+15005550006",
            "kim@example.com",
            "민수@예시.한국",
            "@example.com",
            "1111222233334444555566667777888899990000aaaabbbbccccddddeeeeffff",
            "customer-42",
        ] {
            assert_eq!(masked(&masked(to)), masked(to), "{to}");
        }
        // Recipients that only look a little like masks are masked as usual.
        assert_eq!(masked("kim***@example.com"), "k***@example.com");
        assert_eq!(masked("+8210****5678x"), "***");
        assert_eq!(masked("ab***cd@example.com"), "a***@example.com");
    }

    #[test]
    fn no_mask_contains_the_recipient() {
        for to in [
            "+821012345678",
            "+15005550006",
            "kim@example.com",
            "customer-42",
            "fcm-device-token-0001:ok",
        ] {
            assert!(!masked(to).contains(to), "{to} → {}", masked(to));
        }
    }
}
