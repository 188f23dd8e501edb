//! The query string of a request target: the parameters a client sets in its URL.
//!
//! Keys the server does not know are ignored (clients put tokens and cache-busters there);
//! a key it knows must appear once, and its value is percent-decoded UTF-8.

use crate::http::room::percent_decode;

/// The value of the query parameter `key` in `target`, percent-decoded: `None` if it is not
/// there, `Some("")` for `?key` or `?key=`. Given twice, or not UTF-8 once decoded, it is an
/// error that names the key.
pub(crate) fn param(target: &str, key: &str) -> Result<Option<String>, String> {
    let query = match target.split_once('?') {
        Some((_, query)) => query.split('#').next().unwrap_or(""),
        None => return Ok(None),
    };
    let mut found = None;
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != key {
            continue;
        }
        if found.is_some() {
            return Err(format!(
                "the query parameter {key:?} is given twice; give it once"
            ));
        }
        let bytes = percent_decode(value).map_err(|_| {
            format!("the query parameter {key:?} has a % not followed by two hex digits")
        })?;
        let value = String::from_utf8(bytes)
            .map_err(|_| format!("the query parameter {key:?} is not UTF-8 once decoded"))?;
        found = Some(value);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_is_found_decoded_and_only_once() {
        assert_eq!(param("/", "resume"), Ok(None));
        assert_eq!(param("/room?x=1", "resume"), Ok(None));
        assert_eq!(param("/?resume", "resume"), Ok(Some(String::new())));
        assert_eq!(param("/?resume=", "resume"), Ok(Some(String::new())));
        assert_eq!(
            param("/r?t=1&resume=ab%3A12&u", "resume"),
            Ok(Some("ab:12".to_string()))
        );
        assert_eq!(param("/?resumex=1#resume=2", "resume"), Ok(None));
        assert!(
            param("/?resume&resume=a:1", "resume")
                .unwrap_err()
                .contains("twice")
        );
        assert!(
            param("/?resume=%FF", "resume")
                .unwrap_err()
                .contains("UTF-8")
        );
        assert!(param("/?resume=%F", "resume").unwrap_err().contains("hex"));
    }
}
