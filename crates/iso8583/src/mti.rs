//! The message type indicator: four decimal digits (version, class, function, origin).

use std::fmt;

/// A message type indicator as four ASCII digits, whatever its wire encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mti([u8; 4]);

impl Mti {
    /// An MTI from four ASCII digits; `None` if any is not a digit.
    pub fn new(digits: [u8; 4]) -> Option<Mti> {
        digits.iter().all(u8::is_ascii_digit).then_some(Mti(digits))
    }

    /// Parse `"0200"`.
    pub fn parse(text: &str) -> Option<Mti> {
        let digits: [u8; 4] = text.as_bytes().try_into().ok()?;
        Mti::new(digits)
    }

    /// The four ASCII digits.
    pub fn digits(&self) -> [u8; 4] {
        self.0
    }

    /// As text, e.g. `"0200"`.
    pub fn as_str(&self) -> &str {
        // Invariant: four ASCII digits.
        std::str::from_utf8(&self.0).unwrap_or("????")
    }

    /// Message class digit (`1` authorisation, `2` financial, `4` reversal, `8` network...).
    pub fn class(&self) -> u8 {
        self.0[1] - b'0'
    }

    /// Message function digit (`0` request, `1` response, `2` advice, `3` advice response...).
    pub fn function(&self) -> u8 {
        self.0[2] - b'0'
    }

    /// Whether this is a request, advice or notification (even function digit).
    pub fn is_request(&self) -> bool {
        self.function().is_multiple_of(2)
    }

    /// Whether this is a repeat (origin digit 1 or 3: 0401, 0421, ...).
    pub fn is_repeat(&self) -> bool {
        matches!(self.0[3], b'1' | b'3')
    }

    /// The response MTI for a request: 0100 -> 0110, 0401 -> 0410, 0420 -> 0430.
    /// `None` when this already is a response.
    pub fn response(&self) -> Option<Mti> {
        if !self.is_request() {
            return None;
        }
        let mut d = self.0;
        d[2] += 1;
        d[3] = if d[3] >= b'2' { b'2' } else { b'0' };
        Some(Mti(d))
    }

    /// The request this MTI belongs to, for matching: responses map back to their request
    /// (0110 -> 0100, 0430 -> 0420, 0810 -> 0800) and repeats to the original (0401 -> 0400).
    pub fn request_class(&self) -> Mti {
        let mut d = self.0;
        if !self.is_request() {
            d[2] -= 1;
        }
        d[3] = if d[3] >= b'2' { b'2' } else { b'0' };
        Mti(d)
    }
}

impl fmt::Display for Mti {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Mti {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mti({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Mti {
        Mti::parse(s).unwrap()
    }

    #[test]
    fn responses_and_request_classes() {
        for (req, resp) in [
            ("0100", "0110"),
            ("0200", "0210"),
            ("0400", "0410"),
            ("0401", "0410"),
            ("0420", "0430"),
            ("0421", "0430"),
            ("0800", "0810"),
            ("1200", "1210"),
        ] {
            assert_eq!(m(req).response(), Some(m(resp)), "{req}");
            assert_eq!(m(resp).request_class(), m(req).request_class(), "{resp}");
        }
        assert_eq!(m("0110").response(), None);
        assert_eq!(m("0401").request_class(), m("0400"));
        assert!(m("0421").is_repeat());
        assert_eq!(Mti::parse("02a0"), None);
        assert_eq!(Mti::parse("020"), None);
    }
}
