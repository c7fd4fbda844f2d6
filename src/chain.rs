//! One line for an error and its causes, for logs, alerts and status files. A leaf: imports nothing
//! from the crate, so every layer (`sys` included) can use it.

/// Renders an error and all its causes on one line: `outer: cause: root cause`.
pub fn render_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = cause.source();
    }
    out
}
