//! What a pair record holds, and the protected form of a message (PCI DSS 3.3, 3.4).
//!
//! A message is stored field by field as text (binary fields as hex), except:
//! - the PAN (field 2, or any field whose spec class is `pan`): first 6 + last 4 only, and
//!   beside the record an HMAC-SHA256 of the full PAN under the PAN key, for search;
//! - track data (35, 36, 45), the PIN block (52) and anything the spec marks `track`, `pin`
//!   or `cvv`: never stored, not even encrypted; only their presence is listed in `withheld`;
//! - EMV data (55, or class `emv`): only the tags of [`EMV_ALLOW_LIST`], re-encoded; card
//!   data tags are dropped even if a future allow-list named them. Malformed TLV is withheld.

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use smallvec::SmallVec;
use switchyard_iso8583::mask::push_masked_pan;
use switchyard_iso8583::spec::Sensitivity;
use switchyard_iso8583::tlv;
use switchyard_iso8583::MessageView;

use crate::keys::{AuditKeys, PanHash};

/// Fields never stored whatever the spec says: tracks 2, 3 and 1, and the PIN block.
pub const NEVER_STORED: &[u8] = &[35, 36, 45, 52];

/// EMV tags kept in the audit log: cryptograms, terminal and transaction data that carry no
/// cardholder data.
pub const EMV_ALLOW_LIST: &[u32] = &[
    0x4F, 0x50, 0x82, 0x84, 0x8A, 0x91, 0x95, 0x9A, 0x9B, 0x9C, 0x5F24, 0x5F2A, 0x5F34, 0x9F02,
    0x9F03, 0x9F06, 0x9F07, 0x9F09, 0x9F10, 0x9F1A, 0x9F1E, 0x9F21, 0x9F26, 0x9F27, 0x9F33, 0x9F34,
    0x9F35, 0x9F36, 0x9F37, 0x9F41, 0x9F53, 0x9F6E,
];

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The issuer approved (39 = 00, 08, 10, 11, 16, Y1, Y3).
    Approved,
    /// The issuer declined.
    Declined,
    /// Sent, no answer by the deadline (outcome unknown, reversed).
    Timeout,
    /// No route for the card (39 = 15).
    NoRoute,
    /// The request did not decode (39 = 30).
    FormatError,
    /// The issuer link was down (39 = 91, not sent).
    LinkDown,
    /// The issuer link was busy (39 = 91, not sent).
    LinkBusy,
    /// The connection to the issuer was lost with the request on it (outcome unknown).
    ConnectionLost,
    /// Unsupported message type (39 = 12).
    InvalidTransaction,
    /// A duplicate of a request in flight (39 = 94).
    Duplicate,
    /// Answered by the switch itself (network management, stand-in).
    SwitchAnswered,
    /// A reversal the issuer acknowledged.
    Reversed,
    /// The issuer answered with something unusable (outcome unknown).
    IssuerError,
    /// The switch restarted with the request in flight (reversed).
    Recovered,
    /// Refused by the merchant and terminal registry (58, 03, 12).
    Refused,
    /// Blocked by an abnormal-activity rule.
    Blocked,
    /// Approved by the switch standing in for an issuer that was down (advice queued).
    StandInApproved,
    /// Internal error (39 = 96).
    SystemError,
    /// Refused by card security: a PIN block or MAC the switch could not translate or
    /// verify (39 = 63, or the dialect's code); never forwarded.
    SecurityError,
    /// A completion (0220) or void (0200, processing code 02) whose original the switch
    /// does not hold: no standing authorisation or open-batch transaction with that RRN and
    /// authorisation id (39 = 25); never forwarded.
    NoOriginal,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 20] = [
        Outcome::Approved,
        Outcome::Declined,
        Outcome::Timeout,
        Outcome::NoRoute,
        Outcome::FormatError,
        Outcome::LinkDown,
        Outcome::LinkBusy,
        Outcome::ConnectionLost,
        Outcome::InvalidTransaction,
        Outcome::Duplicate,
        Outcome::SwitchAnswered,
        Outcome::Reversed,
        Outcome::IssuerError,
        Outcome::Recovered,
        Outcome::Refused,
        Outcome::Blocked,
        Outcome::StandInApproved,
        Outcome::SystemError,
        Outcome::SecurityError,
        Outcome::NoOriginal,
    ];

    /// The kebab-case name used in JSON, metrics and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Approved => "approved",
            Outcome::Declined => "declined",
            Outcome::Timeout => "timeout",
            Outcome::NoRoute => "no-route",
            Outcome::FormatError => "format-error",
            Outcome::LinkDown => "link-down",
            Outcome::LinkBusy => "link-busy",
            Outcome::ConnectionLost => "connection-lost",
            Outcome::InvalidTransaction => "invalid-transaction",
            Outcome::Duplicate => "duplicate",
            Outcome::SwitchAnswered => "switch-answered",
            Outcome::Reversed => "reversed",
            Outcome::IssuerError => "issuer-error",
            Outcome::Recovered => "recovered",
            Outcome::Refused => "refused",
            Outcome::Blocked => "blocked",
            Outcome::StandInApproved => "stand-in-approved",
            Outcome::SystemError => "system-error",
            Outcome::SecurityError => "security-error",
            Outcome::NoOriginal => "no-original",
        }
    }

    /// The outcome with this name.
    pub fn from_name(name: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.name() == name)
    }

    /// Whether a response code means approval.
    pub fn is_approval_code(code: &str) -> bool {
        matches!(code, "00" | "08" | "10" | "11" | "16" | "Y1" | "Y3")
    }

    /// Whether a response code (when there is one) means approval.
    pub fn approves_code(code: Option<&str>) -> bool {
        code.is_some_and(Outcome::is_approval_code)
    }

    /// Whether `response` carries an approval code in field 39.
    pub fn approves(response: &MessageView<'_>) -> bool {
        response
            .field(39)
            .is_some_and(|f| std::str::from_utf8(&f.value()).is_ok_and(Outcome::is_approval_code))
    }
}

/// A PAN as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectedPan {
    /// First 6 + last 4 (inline: no allocation).
    pub masked: ShortText,
    /// HMAC-SHA256 of the PAN under the PAN key, hex.
    pub hash: PanHash,
}

/// Field number to text, in field order, all texts in one buffer: a message's texts cost two
/// allocations instead of one per field (the switch protects two messages per request).
/// In JSON a map from field number to text, `{"3":"000000","4":"000000001000"}`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FieldTexts {
    text: String,
    /// Each field's number and the end of its text in `text`, by field number; inline for
    /// the fields of a usual message (one allocation less per protected message).
    ends: SmallVec<[(u8, u32); INLINE_FIELDS]>,
}

/// Fields whose ends a [`FieldTexts`] keeps without allocating (a purchase request has
/// about 20).
const INLINE_FIELDS: usize = 24;

impl FieldTexts {
    /// Room for `fields` fields of `bytes` bytes of text in all.
    pub fn with_capacity(fields: usize, bytes: usize) -> FieldTexts {
        FieldTexts {
            text: String::with_capacity(bytes),
            ends: SmallVec::with_capacity(fields),
        }
    }

    /// The text of field `n`.
    pub fn get(&self, n: u8) -> Option<&str> {
        let i = self.ends.binary_search_by_key(&n, |&(m, _)| m).ok()?;
        self.text.get(self.start(i)..self.end(i))
    }

    /// Whether field `n` is present.
    pub fn contains(&self, n: u8) -> bool {
        self.get(n).is_some()
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are no fields.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Field numbers and texts, by field number.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &str)> + '_ {
        let text = |i: usize| {
            self.text
                .get(self.start(i)..self.end(i))
                .unwrap_or_default()
        };
        (0..self.ends.len()).map(move |i| (self.ends[i].0, text(i)))
    }

    fn start(&self, i: usize) -> usize {
        i.checked_sub(1).map_or(0, |p| self.end(p))
    }

    fn end(&self, i: usize) -> usize {
        self.ends[i].1 as usize
    }

    /// Field `n` ends where the text ends now. (A message's text is far below 4 GiB: frames
    /// are limited long before.)
    fn mark(&mut self, n: u8) {
        let end = u32::try_from(self.text.len()).unwrap_or(u32::MAX);
        self.ends.push((n, end));
    }

    /// Set field `n` to `text`, replacing what it had.
    pub fn insert(&mut self, n: u8, text: &str) {
        self.push_with(n, |out| out.push_str(text));
    }

    /// Set field `n` to what `write` appends to the buffer (the hot path: fields added in
    /// order are written in place; out of order or replaced, the buffer is rebuilt).
    pub fn push_with(&mut self, n: u8, write: impl FnOnce(&mut String)) {
        if self.ends.last().is_none_or(|&(last, _)| last < n) {
            write(&mut self.text);
            self.mark(n);
            return;
        }
        let mut value = String::new();
        write(&mut value);
        let mut rebuilt = FieldTexts::with_capacity(self.len() + 1, self.text.len() + value.len());
        let mut placed = false;
        for (m, text) in self.iter() {
            if !placed && m >= n {
                rebuilt.text.push_str(&value);
                rebuilt.mark(n);
                placed = true;
            }
            if m != n {
                rebuilt.text.push_str(text);
                rebuilt.mark(m);
            }
        }
        *self = rebuilt;
    }
}

impl std::fmt::Debug for FieldTexts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for FieldTexts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (n, text) in self.iter() {
            map.serialize_entry(&n, text)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for FieldTexts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Texts;
        impl<'de> Visitor<'de> for Texts {
            type Value = FieldTexts;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map from field number to text")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FieldTexts, A::Error> {
                let mut texts = FieldTexts::default();
                while let Some((n, text)) = map.next_entry::<u8, std::borrow::Cow<'de, str>>()? {
                    texts.insert(n, &text);
                }
                Ok(texts)
            }
        }
        deserializer.deserialize_map(Texts)
    }
}

/// A message's identifier as text (terminal, merchant, STAN, RRN, codes, MTIs): inline up to
/// 23 bytes, so that the pair record's identifiers cost no allocation each; longer ones (a
/// dialect with longer fields) go to the heap. In JSON a string.
#[derive(Clone)]
pub struct ShortText(Short);

const INLINE: usize = 23;

#[derive(Clone)]
enum Short {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<str>),
}

impl ShortText {
    /// The text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Always whole characters of a `str` (see `From<&str>`).
            Short::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Short::Heap(text) => text,
        }
    }

    /// `n` in decimal, zero-padded to `width` digits (at most 20; a STAN is
    /// `ShortText::digits(42, 6)`).
    pub fn digits(n: u64, width: usize) -> ShortText {
        let (digits, start) = switchyard_iso8583::wire::decimal(n, width);
        ShortText::from(std::str::from_utf8(&digits[start..]).unwrap_or_default())
    }

    /// A field's text (see `Field::text`), without trailing spaces when `trim`.
    pub fn of_field(field: &switchyard_iso8583::Field<'_>, trim: bool) -> ShortText {
        let value = field.value();
        if field.spec.class.is_binary() {
            return ShortText::from(switchyard_iso8583::wire::to_hex(&value));
        }
        let text = String::from_utf8_lossy(&value);
        ShortText::from(if trim { text.trim_end() } else { &text })
    }
}

impl From<&str> for ShortText {
    fn from(text: &str) -> ShortText {
        if text.len() > INLINE {
            return ShortText(Short::Heap(text.into()));
        }
        let mut bytes = [0u8; INLINE];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        ShortText(Short::Inline {
            len: text.len() as u8,
            bytes,
        })
    }
}

impl From<String> for ShortText {
    fn from(text: String) -> ShortText {
        ShortText::from(text.as_str())
    }
}

impl Default for ShortText {
    fn default() -> ShortText {
        ShortText::from("")
    }
}

impl std::ops::Deref for ShortText {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for ShortText {
    fn eq(&self, other: &ShortText) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for ShortText {}

impl PartialEq<str> for ShortText {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ShortText {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::hash::Hash for ShortText {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for ShortText {
    fn partial_cmp(&self, other: &ShortText) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ShortText {
    fn cmp(&self, other: &ShortText) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::fmt::Debug for ShortText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for ShortText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ShortText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ShortText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        Ok(ShortText::from(&*text))
    }
}

/// A message as the log keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectedMessage {
    /// The MTI.
    pub mti: ShortText,
    /// Field number to protected text.
    pub fields: FieldTexts,
    /// Fields that were present and are not stored (tracks, PIN block, CVV, bad EMV data).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub withheld: Vec<u8>,
}

/// The protected form of `view`, and its PAN's protected form when it has one.
pub fn protect(
    view: &MessageView<'_>,
    keys: &AuditKeys,
) -> (ProtectedMessage, Option<ProtectedPan>) {
    protect_keyed(view, Some(keys))
}

/// [`protect`], with the PAN's keyed hash only when there are `keys` to make it (the
/// answer's PAN is the request's, hashed once).
fn protect_keyed(
    view: &MessageView<'_>,
    keys: Option<&AuditKeys>,
) -> (ProtectedMessage, Option<ProtectedPan>) {
    let present = view.bitmaps().iter().map(|w| w.count_ones() as usize).sum();
    // Text is at most twice the frame (binary fields as hex).
    let fields = FieldTexts::with_capacity(present, 2 * view.buffer().len());
    let mut message = ProtectedMessage {
        mti: ShortText::from(view.mti().as_str()),
        fields,
        withheld: Vec::new(),
    };
    let mut pan = None;
    for field in view.fields() {
        let n = field.number;
        let sensitivity = field.spec.sensitivity;
        if NEVER_STORED.contains(&n)
            || matches!(
                sensitivity,
                Sensitivity::Track | Sensitivity::Pin | Sensitivity::Cvv
            )
        {
            message.withheld.push(n);
        } else if n == 2 || sensitivity == Sensitivity::Pan {
            let value = field.value();
            message
                .fields
                .push_with(n, |out| push_masked_pan(out, &value));
            if let (Some(keys), true) = (keys, n == 2 || pan.is_none()) {
                pan = Some(ProtectedPan {
                    masked: ShortText::from(message.fields.get(n).unwrap_or_default()),
                    hash: keys.pan_hash(&value),
                });
            }
        } else if n == 55 || sensitivity == Sensitivity::Emv {
            match allowed_emv(&field.value()) {
                Some(kept) => message
                    .fields
                    .push_with(n, |out| switchyard_iso8583::wire::push_hex_str(out, &kept)),
                None => message.withheld.push(n),
            }
        } else {
            message.fields.push_with(n, |out| field.push_text(out));
        }
    }
    (message, pan)
}

/// The allowed primitive tags of `data`, re-encoded; `None` when it is not BER-TLV.
fn allowed_emv(data: &[u8]) -> Option<Vec<u8>> {
    let mut kept = Vec::with_capacity(data.len());
    collect_allowed(data, &mut kept)?;
    Some(kept)
}

fn collect_allowed(data: &[u8], out: &mut Vec<u8>) -> Option<()> {
    for item in tlv::iter(data) {
        let t = item.ok()?;
        if t.constructed {
            collect_allowed(t.value, out)?;
        } else if EMV_ALLOW_LIST.contains(&t.tag) && !t.is_sensitive() {
            tlv::push(out, t.tag, t.value);
        }
    }
    Some(())
}

/// One transaction as the log keeps it: the terminal's request, what the switch did with it,
/// and the answer the terminal got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairRecord {
    /// When the request was read (microseconds since the Unix epoch).
    pub received_us: i64,
    /// When it was forwarded to the issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_us: Option<i64>,
    /// When the terminal was answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_us: Option<i64>,
    /// Microseconds from receipt to answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<u64>,
    /// The listener the request came in on.
    pub listener: ShortText,
    /// Field 41.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<ShortText>,
    /// Field 42.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant: Option<ShortText>,
    /// The route taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<ShortText>,
    /// The issuer link used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<ShortText>,
    /// Request MTI.
    pub request_mti: ShortText,
    /// Response MTI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_mti: Option<ShortText>,
    /// The terminal's STAN (field 11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stan: Option<ShortText>,
    /// The STAN the issuer saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_stan: Option<ShortText>,
    /// Field 37.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rrn: Option<ShortText>,
    /// Field 4, in minor units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<u64>,
    /// Field 49.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<ShortText>,
    /// Field 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_code: Option<ShortText>,
    /// Field 39 of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_code: Option<ShortText>,
    /// A partial approval's amount (field 4 of an answer with response code 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_amount: Option<u64>,
    /// A partial reversal's replacement amount (the first 12 digits of field 95): what the
    /// original is to stand at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement_amount: Option<u64>,
    /// Field 38 of the answer (the authorisation id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_id: Option<ShortText>,
    /// The business date the transaction belongs to (`YYYYMMDD`), when the switch keeps one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_date: Option<ShortText>,
    /// How it ended.
    pub outcome: Option<Outcome>,
    /// The PAN, protected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pan: Option<ProtectedPan>,
    /// The request, protected.
    pub request: ProtectedMessage,
    /// The answer, protected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<ProtectedMessage>,
    /// The in-flight record written before forwarding (crash recovery pairs them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inflight_seq: Option<u64>,
    /// The reversal queued for this transaction, if its outcome was unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reversal_id: Option<u64>,
    /// Abnormal-activity rules that fired (flagged or blocked), and registry refusals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
}

impl PairRecord {
    /// A record of `request` with its identifying fields filled in.
    pub fn from_request(
        listener: &str,
        request: &MessageView<'_>,
        keys: &AuditKeys,
        received_us: i64,
    ) -> PairRecord {
        let (message, pan) = protect(request, keys);
        let text = |n| request.field(n).map(|f| ShortText::of_field(&f, false));
        let trimmed = |n| request.field(n).map(|f| ShortText::of_field(&f, true));
        PairRecord {
            received_us,
            listener: ShortText::from(listener),
            terminal: trimmed(41),
            merchant: trimmed(42),
            request_mti: ShortText::from(request.mti().as_str()),
            stan: text(11),
            rrn: text(37),
            amount: request.field(4).and_then(|f| f.as_u64()),
            currency: text(49),
            processing_code: text(3),
            replacement_amount: request
                .field(95)
                .and_then(|f| f.text().get(..12).and_then(|a| a.parse().ok())),
            pan,
            request: message,
            ..PairRecord::default()
        }
    }

    /// Add the answer the terminal got (its PAN, masked, is the request's: not hashed again);
    /// a partial approval's amount from field 4.
    pub fn set_response(&mut self, response: &MessageView<'_>) {
        self.set_response_with(response, PartialAmount::Field4);
    }

    /// [`set_response`](Self::set_response), a partial approval's amount where `partial`
    /// says the dialect carries it.
    pub fn set_response_with(&mut self, response: &MessageView<'_>, partial: PartialAmount) {
        let (message, _) = protect_keyed(response, None);
        self.response_mti = Some(message.mti.clone());
        self.response_code = response.field(39).map(|f| ShortText::of_field(&f, false));
        self.auth_id = response.field(38).map(|f| ShortText::of_field(&f, true));
        if self.response_code.as_deref() == Some("10") {
            self.approved_amount = match partial {
                PartialAmount::Field4 => response.field(4).and_then(|f| f.as_u64()),
                PartialAmount::AdditionalAmounts { amount_type } => response
                    .field(54)
                    .and_then(|f| additional_amount(&f.text(), amount_type)),
            };
        }
        self.response = Some(message);
    }
}

/// Where a dialect carries a partial approval's amount (response code 10).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PartialAmount {
    /// Field 4 of the answer.
    #[default]
    Field4,
    /// Field 54 (additional amounts), the set of this amount type.
    AdditionalAmounts {
        /// The amount type (2 digits), for example `02`.
        amount_type: [u8; 2],
    },
}

/// The amount of type `amount_type` in a field 54 of ISO 8583:1987: sets of 20 characters
/// (account type 2, amount type 2, currency 3, sign `C`/`D` 1, amount 12). A debit-signed
/// amount is not an approval and is not taken.
pub fn additional_amount(field54: &str, amount_type: [u8; 2]) -> Option<u64> {
    field54.as_bytes().chunks(20).find_map(|set| {
        if set.len() != 20 || set[2..4] != amount_type || set[7] != b'C' {
            return None;
        }
        std::str::from_utf8(&set[8..20]).ok()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use super::{FieldTexts, PairRecord, ShortText};

    /// A partial approval's amount (code 10, field 4 of the answer) and a partial
    /// reversal's replacement amount (field 95) are kept for the books.
    #[test]
    fn partial_amounts_are_recorded() {
        use switchyard_iso8583::{shipped, MessageBuilder, MessageView, Mti};
        let spec = shipped("iso8583-1987-ascii").unwrap();
        let keys = crate::AuditKeys::demo();
        let mut b = MessageBuilder::new(spec, Mti::parse("0200").unwrap());
        b.set(3, "000000")
            .unwrap()
            .set(4, "000000001000")
            .unwrap()
            .set(11, "000001")
            .unwrap();
        let request = MessageView::decode(spec, b.encode()).unwrap();
        let mut answer = MessageBuilder::new(spec, Mti::parse("0200").unwrap());
        answer
            .respond_to(&request, b"10")
            .unwrap()
            .set(4, "000000000600")
            .unwrap();
        let answer = MessageView::decode(spec, answer.encode()).unwrap();
        let mut pair = PairRecord::from_request("t", &request, &keys, 0);
        pair.set_response(&answer);
        assert_eq!((pair.amount, pair.approved_amount), (Some(1000), Some(600)));
        let mut r = MessageBuilder::new(spec, Mti::parse("0400").unwrap());
        r.set(4, "000000000600").unwrap().set(11, "000002").unwrap();
        r.set(95, format!("{:012}{:012}{:018}", 250, 0, 0)).unwrap();
        let reversal = MessageView::decode(spec, r.encode()).unwrap();
        let pair = PairRecord::from_request("t", &reversal, &keys, 0);
        assert_eq!(pair.replacement_amount, Some(250));
        // A dialect that carries the approved amount in field 54 (type 02, credit-signed).
        let f54 = "0001978C0000000100000002978C000000000600";
        assert_eq!(super::additional_amount(f54, *b"02"), Some(600));
        assert_eq!(super::additional_amount(f54, *b"57"), None);
        assert_eq!(
            super::additional_amount("0002978D000000000600", *b"02"),
            None
        );
        assert_eq!(
            super::additional_amount("0002978C00000", *b"02"),
            None,
            "short"
        );
        assert_eq!(
            super::additional_amount("0002978C00000000060é", *b"02"),
            None
        );
    }

    #[test]
    fn short_texts_are_inline_or_on_the_heap_and_read_alike() {
        for text in [
            "",
            "00",
            "TERM0001",
            "12345678901234567890123",
            "a much longer identifier",
        ] {
            let short = ShortText::from(text);
            assert_eq!(short.as_str(), text);
            let json = serde_json::to_string(&short).unwrap();
            assert_eq!(json, serde_json::to_string(text).unwrap());
            assert_eq!(serde_json::from_str::<ShortText>(&json).unwrap(), short);
        }
        assert_eq!(ShortText::from("ab"), ShortText::from("ab".to_string()));
        let (ab, b) = (
            ShortText::from("ab"),
            ShortText::from("b, longer than twenty-three bytes"),
        );
        assert!(ab < b && b.cmp(&ab).is_gt());
        for (n, width) in [
            (0u64, 6),
            (42, 6),
            (999_999, 6),
            (1_234_567, 6),
            (7, 0),
            (u64::MAX, 3),
        ] {
            assert_eq!(ShortText::digits(n, width).as_str(), format!("{n:0width$}"));
        }
    }

    #[test]
    fn field_texts_keep_field_order_whatever_the_order_of_insertion() {
        let mut texts = FieldTexts::default();
        texts.insert(11, "000123");
        texts.insert(41, "TERM0001");
        texts.insert(3, "000000");
        texts.insert(39, "00");
        texts.insert(41, "TERM0002");
        texts.insert(2, "");
        let all: Vec<(u8, &str)> = texts.iter().collect();
        assert_eq!(
            all,
            [
                (2, ""),
                (3, "000000"),
                (11, "000123"),
                (39, "00"),
                (41, "TERM0002")
            ]
        );
        assert_eq!(texts.get(39), Some("00"));
        assert_eq!(texts.get(2), Some(""));
        assert!(texts.contains(2) && !texts.contains(4));
        assert_eq!(texts.get(4), None);
        assert_eq!(texts.len(), 5);
    }

    #[test]
    fn field_texts_read_and_write_the_json_of_a_map_by_field_number() {
        // What the log held before: a BTreeMap<u8, String>.
        let map = BTreeMap::from([
            (3u8, "000000".to_string()),
            (55, "9F2608".into()),
            (7, "1124103000".into()),
        ]);
        let old = serde_json::to_string(&map).unwrap();
        let texts: FieldTexts = serde_json::from_str(&old).unwrap();
        assert_eq!(serde_json::to_string(&texts).unwrap(), old);
        assert_eq!(texts.get(55), Some("9F2608"));
        // Keys out of order, an escaped text.
        let texts: FieldTexts = serde_json::from_str(r#"{"43":"A \"B\"","4":"1"}"#).unwrap();
        assert_eq!(
            texts.iter().collect::<Vec<_>>(),
            [(4, "1"), (43, "A \"B\"")]
        );
        assert!(serde_json::from_str::<FieldTexts>(r#"{"300":"x"}"#).is_err());
    }
}
