//! Record payloads: MessagePack maps keyed by field name, written straight into one buffer
//! sized for a pair record. Binary rather than JSON: no escaping of every text byte and no
//! number formatting (JSON payloads were about a tenth of the switch's CPU per transaction:
//! two records per request, each with the protected messages' texts), and still
//! self-describing, so a record reads by field name, fields can be added, and old readers
//! skip what they do not know. Logs written before this kept JSON payloads; they read the
//! same ([`decode`] tells the two apart by the first byte: `{` opens a JSON object and
//! never a MessagePack map).

use serde::{Deserialize, Serialize};

use crate::error::{AuditError, Result};

/// Room for a pair record (a few hundred bytes of protected texts and identifiers): one
/// allocation per payload, none when the buffer is a recycled one (see
/// [`crate::AuditLog::encode`]).
pub(crate) const PAYLOAD_CAPACITY: usize = 1024;

/// The payload of `record`.
pub fn encode<T: Serialize + ?Sized>(record: &T) -> Result<Vec<u8>> {
    let mut payload = Vec::with_capacity(PAYLOAD_CAPACITY);
    encode_into(record, &mut payload)?;
    Ok(payload)
}

/// The payload of `record`, appended to `payload`.
pub fn encode_into<T: Serialize + ?Sized>(record: &T, payload: &mut Vec<u8>) -> Result<()> {
    record
        .serialize(&mut rmp_serde::Serializer::new(payload).with_struct_map())
        .map_err(|e| AuditError::Config(format!("record does not serialise: {e}")))
}

/// The record in payload `payload` of record `seq`, MessagePack or (older logs) JSON.
pub fn decode<'a, T: Deserialize<'a>>(seq: u64, payload: &'a [u8]) -> Result<T> {
    let parsed = if payload.first() == Some(&b'{') {
        serde_json::from_slice(payload).map_err(|e| e.to_string())
    } else {
        rmp_serde::from_slice(payload).map_err(|e| e.to_string())
    };
    parsed.map_err(|reason| AuditError::Payload { seq, reason })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{FieldTexts, Outcome, PairRecord, ProtectedMessage, ShortText};

    fn pair() -> PairRecord {
        let mut fields = FieldTexts::default();
        fields.insert(2, "476173******0119");
        fields.insert(4, "000000001000");
        fields.insert(43, "A \"quoted\" name, \u{e9}");
        PairRecord {
            received_us: 1_700_000_000_000_000,
            listener: ShortText::from("terminals"),
            terminal: Some(ShortText::from("T0000001")),
            amount: Some(1000),
            outcome: Some(Outcome::Approved),
            request: ProtectedMessage {
                mti: ShortText::from("0200"),
                fields,
                withheld: vec![35, 52],
            },
            inflight_seq: Some(7),
            rules: vec!["velocity".into()],
            ..PairRecord::default()
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let record = pair();
        let payload = encode(&record).unwrap();
        assert_ne!(payload.first(), Some(&b'{'), "binary, not JSON");
        assert_eq!(decode::<PairRecord>(1, &payload).unwrap(), record);
    }

    #[test]
    fn json_payloads_of_older_logs_read_the_same() {
        let record = pair();
        let json = serde_json::to_vec(&record).unwrap();
        assert_eq!(decode::<PairRecord>(1, &json).unwrap(), record);
    }

    #[test]
    fn a_record_holding_fields_a_newer_writer_added_reads() {
        #[derive(Serialize)]
        struct Newer<'a> {
            #[serde(flatten)]
            pair: &'a PairRecord,
            added_later: Vec<u32>,
        }
        let record = pair();
        let payload = encode(&Newer {
            pair: &record,
            added_later: vec![1, 2],
        })
        .unwrap();
        assert_eq!(decode::<PairRecord>(3, &payload).unwrap(), record);
    }

    #[test]
    fn a_damaged_payload_is_an_error_naming_its_record() {
        let payload = encode(&pair()).unwrap();
        let cut = &payload[..payload.len() / 2];
        let err = decode::<PairRecord>(42, cut).unwrap_err();
        assert!(matches!(err, AuditError::Payload { seq: 42, .. }), "{err}");
    }
}
