//! MQTT 5 user properties, kept as they travel: one buffer of `0x26 key
//! value` entries in wire form. A packet may carry very many (a 1 MB
//! PUBLISH holds 200,000 empty ones at 5 bytes each): held this way they
//! cost their wire size and one allocation per packet, never one per
//! property, and a message forwards them by copying bytes.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use super::EncodeError;

/// The user property identifier.
const ID: u8 = 0x26;

/// Zero or more (key, value) pairs: order kept, keys may repeat.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct UserProperties(Bytes);

impl UserProperties {
    pub fn new() -> Self {
        UserProperties(Bytes::new())
    }

    /// Entries the decoder has checked (identifier, two UTF-8 strings
    /// without U+0000, each length-prefixed), back to back.
    pub(super) fn from_checked(wire: Bytes) -> Self {
        UserProperties(wire)
    }

    /// The pairs given, in order; fails if a key or value is longer than
    /// MQTT can carry (65535 bytes).
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, EncodeError> {
        let mut out = BytesMut::new();
        for (k, v) in pairs {
            put_entry(&mut out, k.as_ref(), v.as_ref())?;
        }
        Ok(UserProperties(out.freeze()))
    }

    /// Appends one pair.
    pub fn push(&mut self, key: &str, value: &str) -> Result<(), EncodeError> {
        let mut out = BytesMut::with_capacity(self.0.len() + 5 + key.len() + value.len());
        out.extend_from_slice(&self.0);
        put_entry(&mut out, key, value)?;
        self.0 = out.freeze();
        Ok(())
    }

    /// The pairs in order.
    pub fn iter(&self) -> Iter<'_> {
        Iter { rest: &self.0 }
    }

    /// The number of pairs.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries as they go on the wire.
    pub fn as_wire(&self) -> &Bytes {
        &self.0
    }

    /// Owned copies of the pairs.
    pub fn to_vec(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

fn put_entry(out: &mut BytesMut, key: &str, value: &str) -> Result<(), EncodeError> {
    for s in [key, value] {
        if s.len() > 0xFFFF {
            return Err(EncodeError::FieldTooLong(s.len()));
        }
    }
    out.put_u8(ID);
    out.put_u16(key.len() as u16);
    out.put_slice(key.as_bytes());
    out.put_u16(value.len() as u16);
    out.put_slice(value.as_bytes());
    Ok(())
}

/// Iterates the pairs of [`UserProperties`].
pub struct Iter<'a> {
    rest: &'a [u8],
}

impl<'a> Iter<'a> {
    fn string(&mut self) -> Option<&'a str> {
        let len = u16::from_be_bytes([*self.rest.first()?, *self.rest.get(1)?]) as usize;
        let bytes = self.rest.get(2..2 + len)?;
        self.rest = &self.rest[2 + len..];
        std::str::from_utf8(bytes).ok()
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        // Every constructor checked the entries; a short or bad one (which
        // cannot happen) ends the iteration rather than panicking.
        let (&id, rest) = self.rest.split_first()?;
        if id != ID {
            self.rest = &[];
            return None;
        }
        self.rest = rest;
        let pair = self.string().zip(self.string());
        if pair.is_none() {
            self.rest = &[];
        }
        pair
    }
}

impl fmt::Debug for UserProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_trip_in_order() {
        let mut u = UserProperties::from_pairs([("k", "v1"), ("k", "v2"), ("", "")]).unwrap();
        u.push("trace", "é").unwrap();
        assert_eq!(
            u.iter().collect::<Vec<_>>(),
            [("k", "v1"), ("k", "v2"), ("", ""), ("trace", "é")]
        );
        assert_eq!(u.len(), 4);
        // 5 bytes per empty pair, as on the wire.
        assert_eq!(
            UserProperties::from_pairs([("", "")])
                .unwrap()
                .as_wire()
                .len(),
            5
        );
        let long = "x".repeat(65536);
        assert!(UserProperties::from_pairs([(long.as_str(), "")]).is_err());
    }
}
