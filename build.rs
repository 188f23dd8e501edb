//! Names the target conditions that the code asks about in more than one place, so that each
//! list of systems is written once, here, and the code says what it means: `#[cfg(ppoll)]`
//! rather than four operating systems and a feature.

use cfg_aliases::cfg_aliases;

fn main() {
    cfg_aliases! {
        // The Linux backend of src/sys (ppoll.rs): ppoll(2), with a signal as the waker. The
        // systems that have ppoll, unless the cargo feature `portable-poll` asks for the
        // portable backend. Cargo.toml's target table for the `polling` crate lists the same
        // systems, as Cargo cannot read an alias.
        ppoll: {
            all(
                any(target_os = "linux", target_os = "android", target_os = "freebsd", target_os = "openbsd"),
                not(feature = "portable-poll")
            )
        },
        // The systems whose send(2) takes MSG_NOSIGNAL (sys::NoSigpipe).
        msg_nosignal: {
            any(
                target_os = "linux",
                target_os = "android",
                target_os = "freebsd",
                target_os = "openbsd",
                target_os = "netbsd",
                target_os = "dragonfly"
            )
        },
    }
}
