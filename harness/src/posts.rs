//! What a broker user posted, as a person would read it: dense (v2) posts decoded.

use crate::DevNode;
use serde_json::json;

/// The texts of the newest `count` posts of `user` (`msg` + `msg2`). A dense v2 post is shown as one
/// line per message, `<topic> <payload as lossy UTF-8>`; JSON formats (v1, poc) as they are.
pub fn readable_posts(node: &DevNode, user: &str, count: usize) -> Vec<String> {
    let posts = node.ok("getposts", json!([count, [{ "username": user }]]));
    posts
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["userpost"]["n"] == user)
        .map(|p| {
            let up = &p["userpost"];
            let text = format!(
                "{}{}",
                up["msg"].as_str().unwrap_or(""),
                up["msg2"].as_str().unwrap_or("")
            );
            match mqtt_twister_wire::decode(&text) {
                Ok((_, records)) => records
                    .iter()
                    .map(|r| format!("{} {}\n", r.topic, String::from_utf8_lossy(&r.payload)))
                    .collect(),
                Err(_) => text,
            }
        })
        .collect()
}
