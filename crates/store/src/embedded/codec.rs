//! The byte layouts of what the embedded store keeps in redb: a key's record and one revision's
//! events. Hand-rolled and little-endian: both are tiny, and a format we own cannot change under
//! us with a serialization crate's major version.

use crate::{Error, Event, KeyValue, LeaseId, Result, Revision};

/// A key's record: `revision (i64) | lease (i64, 0 for none) | value`.
pub(super) fn encode_record(revision: Revision, lease: Option<LeaseId>, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&revision.to_le_bytes());
    out.extend_from_slice(&lease.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(value);
    out
}

pub(super) fn decode_record(key: &str, bytes: &[u8]) -> Result<KeyValue> {
    let mut reader = Reader { bytes, what: "record" };
    let revision = reader.i64()?;
    let lease = reader.i64()?;
    Ok(KeyValue { key: key.to_owned(), value: reader.rest().to_vec(), revision, lease: lease_from(lease) })
}

/// The lease a stored record hangs on, without copying its value.
pub(super) fn record_lease(bytes: &[u8]) -> Result<Option<LeaseId>> {
    let mut reader = Reader { bytes, what: "record" };
    reader.i64()?;
    Ok(lease_from(reader.i64()?))
}

/// The revision that last changed a stored record.
pub(super) fn record_revision(bytes: &[u8]) -> Result<Revision> {
    Reader { bytes, what: "record" }.i64()
}

const PUT: u8 = 0;
const DELETE: u8 = 1;

/// One revision's events, each `tag (u8) | key length (u32) | key`, and for a put `lease (i64) |
/// value length (u32) | value`. The revision itself is the log table's key.
pub(super) fn encode_events(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    for event in events {
        let key = event.key().as_bytes();
        out.push(if matches!(event, Event::Put(_)) { PUT } else { DELETE });
        out.extend_from_slice(&len_u32(key.len()).to_le_bytes());
        out.extend_from_slice(key);
        if let Event::Put(kv) = event {
            out.extend_from_slice(&kv.lease.unwrap_or(0).to_le_bytes());
            out.extend_from_slice(&len_u32(kv.value.len()).to_le_bytes());
            out.extend_from_slice(&kv.value);
        }
    }
    out
}

pub(super) fn decode_events(revision: Revision, bytes: &[u8]) -> Result<Vec<Event>> {
    let mut reader = Reader { bytes, what: "event log entry" };
    let mut events = Vec::new();
    while !reader.bytes.is_empty() {
        let tag = reader.take(1)?[0];
        let key_len = reader.u32()? as usize;
        let key = std::str::from_utf8(reader.take(key_len)?)
            .map_err(|_| {
                Error::Other(format!("corrupt event log entry at revision {revision}: key is not UTF-8"))
            })?
            .to_owned();
        events.push(match tag {
            PUT => {
                let lease = lease_from(reader.i64()?);
                let value_len = reader.u32()? as usize;
                let value = reader.take(value_len)?.to_vec();
                Event::Put(KeyValue { key, value, revision, lease })
            }
            DELETE => Event::Delete { key, revision },
            other => {
                return Err(Error::Other(format!(
                    "corrupt event log entry at revision {revision}: tag {other}"
                )));
            }
        });
    }
    Ok(events)
}

fn lease_from(raw: i64) -> Option<LeaseId> {
    (raw != 0).then_some(raw)
}

/// Keys and values longer than 4 GiB never get here: redb refuses values over 3 GiB first.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(Error::Other(format!("corrupt {}: truncated", self.what)));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn i64(&mut self) -> Result<i64> {
        let bytes = self.take(8)?;
        Ok(i64::from_le_bytes(bytes.try_into().unwrap_or_default()))
    }

    fn u32(&mut self) -> Result<u32> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes(bytes.try_into().unwrap_or_default()))
    }

    fn rest(self) -> &'a [u8] {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let events = vec![
            Event::Put(KeyValue { key: "a/1".into(), value: b"one".to_vec(), revision: 7, lease: Some(3) }),
            Event::Delete { key: "a/2".into(), revision: 7 },
            Event::Put(KeyValue { key: "ä".into(), value: vec![], revision: 7, lease: None }),
        ];
        assert_eq!(decode_events(7, &encode_events(&events)).unwrap(), events);
    }

    #[test]
    fn records_round_trip() {
        let bytes = encode_record(42, Some(9), b"value");
        let kv = decode_record("k", &bytes).unwrap();
        assert_eq!(kv, KeyValue { key: "k".into(), value: b"value".to_vec(), revision: 42, lease: Some(9) });
        assert_eq!(record_lease(&bytes).unwrap(), Some(9));
        assert_eq!(record_revision(&bytes).unwrap(), 42);
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let bytes = encode_events(&[Event::Delete { key: "key".into(), revision: 1 }]);
        for len in 1..bytes.len() {
            assert!(decode_events(1, &bytes[..len]).is_err(), "accepted {len} bytes");
        }
        assert!(decode_record("k", &[0; 15]).is_err());
    }
}
