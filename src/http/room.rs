//! The room a WebSocket URL names: its path, percent-decoded, without the leading `/`.
//!
//! `ws://host:3000/` is the lobby (the empty name) and `ws://host:3000/chat/rust` is the room
//! `chat/rust`. The query string is not part of it. A name must be valid UTF-8 once decoded,
//! hold no control character, and be at most [`MAX_ROOM_NAME`] bytes; anything else is
//! refused with a reason.

/// The longest room name, in bytes once decoded. A room's name travels with every broadcast
/// between the instances of a cluster and appears in log lines; a path that names a chat
/// room ("school/class-7b/physics") is far shorter, and 128 bytes leaves room for nesting.
pub(crate) const MAX_ROOM_NAME: usize = 128;

/// The room a request target names, or why it names none.
pub(crate) fn from_target(target: &str) -> Result<String, String> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let path = path.strip_prefix('/').unwrap_or(path);
    let bytes = percent_decode(path)?;
    let name = String::from_utf8(bytes)
        .map_err(|_| "the room name (the URL path) is not UTF-8 once decoded".to_string())?;
    if name.len() > MAX_ROOM_NAME {
        return Err(format!(
            "the room name (the URL path) is {} bytes, over the limit of {MAX_ROOM_NAME}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("the room name (the URL path) holds a control character".to_string());
    }
    Ok(name)
}

/// `%XX` escapes decoded (RFC 3986 section 2.1); every other byte as it is.
pub(crate) fn percent_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(byte) = bytes.next() {
        if byte != b'%' {
            out.push(byte);
            continue;
        }
        let hex = [bytes.next(), bytes.next()];
        let value = match hex {
            [Some(high), Some(low)] => std::str::from_utf8(&[high, low])
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 16).ok()),
            _ => None,
        };
        match value {
            Some(value) => out.push(value),
            None => {
                return Err("the URL path has a % that is not followed by two hex digits".into());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_names_the_room() {
        assert_eq!(from_target("/").unwrap(), "");
        assert_eq!(from_target("/?x=1").unwrap(), "");
        assert_eq!(from_target("/chat/rust").unwrap(), "chat/rust");
        assert_eq!(from_target("/chat/rust?token=abc").unwrap(), "chat/rust");
        assert_eq!(from_target("/caf%C3%A9%20bar").unwrap(), "café bar");
        assert_eq!(from_target("/%2Fslash").unwrap(), "/slash");
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        assert!(from_target("/%FF").unwrap_err().contains("not UTF-8"));
        assert!(
            from_target("/a%0Ab")
                .unwrap_err()
                .contains("control character")
        );
        assert!(from_target("/a%2").unwrap_err().contains("two hex digits"));
        assert!(from_target("/a%zz").unwrap_err().contains("two hex digits"));
        let long = format!("/{}", "a".repeat(MAX_ROOM_NAME + 1));
        assert!(
            from_target(&long)
                .unwrap_err()
                .contains("over the limit of 128")
        );
        assert!(from_target(&format!("/{}", "a".repeat(MAX_ROOM_NAME))).is_ok());
    }
}
