//! TransformerLens `utils.get_act_name` shorthands for hook names, and close-match suggestions.

/// A cache or hook key: a full name, a shorthand (`"pattern"`, `"resid_pre1"`, `"scale"`), or a
/// shorthand with a layer (negative counts from the end) and a layer type (`"ln1"`, `"attn"`, `"mlp"`).
#[derive(Debug, Clone, PartialEq)]
pub struct ActKey {
    /// Full name or shorthand.
    pub name: String,
    /// Block index; negative counts from the last block.
    pub layer: Option<i64>,
    /// Sub-module: `ln1`, `ln2`, `ln_final`, `attn`/`a`, `mlp`/`m`.
    pub layer_type: Option<String>,
}

impl From<&str> for ActKey {
    fn from(name: &str) -> Self {
        ActKey {
            name: name.to_string(),
            layer: None,
            layer_type: None,
        }
    }
}

impl From<String> for ActKey {
    fn from(name: String) -> Self {
        ActKey {
            name,
            layer: None,
            layer_type: None,
        }
    }
}

impl From<(&str, i64)> for ActKey {
    fn from((name, layer): (&str, i64)) -> Self {
        ActKey {
            name: name.to_string(),
            layer: Some(layer),
            layer_type: None,
        }
    }
}

impl From<(&str, i64, &str)> for ActKey {
    fn from((name, layer, ty): (&str, i64, &str)) -> Self {
        ActKey {
            name: name.to_string(),
            layer: Some(layer),
            layer_type: Some(ty.to_string()),
        }
    }
}

impl ActKey {
    /// The full hook name, following TransformerLens's `utils.get_act_name` (plus `"resid_pre1"`-style
    /// names with underscores, and negative layers resolved against `n_layers`).
    pub fn resolve(&self, n_layers: usize) -> String {
        let (mut name, mut layer, mut ty) =
            (self.name.clone(), self.layer, self.layer_type.clone());
        if layer.is_none() && ty.is_none() && (name.contains('.') || name.starts_with("hook_")) {
            return name;
        }
        if layer.is_none() {
            if let Some((base, l, rest)) = split_layer_suffix(&name) {
                layer = Some(l);
                if !rest.is_empty() {
                    ty = Some(rest.clone());
                }
                name = base;
            }
        }
        let name = match name.as_str() {
            "attn" => "pattern",
            "attn_logits" => "attn_scores",
            "key" => "k",
            "query" => "q",
            "value" => "v",
            "mlp_pre" => "pre",
            "mlp_mid" => "mid",
            "mlp_post" => "post",
            other => other,
        }
        .to_string();
        let ty =
            if ["k", "v", "q", "z", "result", "pattern", "attn_scores"].contains(&name.as_str()) {
                Some("attn".to_string())
            } else if ["pre", "post", "mid"].contains(&name.as_str()) {
                Some("mlp".to_string())
            } else {
                ty.map(|t| match t.as_str() {
                    "a" | "attention" => "attn".to_string(),
                    "m" => "mlp".to_string(),
                    "b" | "block" | "blocks" => String::new(),
                    other => other.to_string(),
                })
            };
        let mut full = String::new();
        if let Some(l) = layer {
            let l = if l < 0 { n_layers as i64 + l } else { l };
            full.push_str(&format!("blocks.{l}."));
        }
        match ty.as_deref() {
            Some("") | None => {}
            Some("ln_final") if layer.is_none() => {}
            Some(t) => full.push_str(&format!("{t}.")),
        }
        full.push_str(&format!("hook_{name}"));
        if (name == "scale" || name == "normalized") && layer.is_none() {
            full = format!("ln_final.{full}");
        }
        full
    }
}

/// `"resid_pre1"` → ("resid_pre", 1, ""), `"post0"` → ("post", 0, ""), `"scale2ln1"` → ("scale", 2, "ln1").
fn split_layer_suffix(s: &str) -> Option<(String, i64, String)> {
    let start = s.find(|c: char| c.is_ascii_digit())?;
    let end = s[start..]
        .find(|c: char| !c.is_ascii_digit())
        .map_or(s.len(), |i| start + i);
    let base = &s[..start];
    if base.is_empty() || !base.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
        return None;
    }
    Some((
        base.to_string(),
        s[start..end].parse().ok()?,
        s[end..].to_string(),
    ))
}

/// Up to three of `known` closest to `name` by edit distance.
pub fn close_matches<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut scored: Vec<(usize, &str)> = known
        .into_iter()
        .map(|k| (edit_distance(name, k), k))
        .collect();
    scored.sort();
    scored
        .into_iter()
        .take(3)
        .map(|(_, k)| k.to_string())
        .collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(k: impl Into<ActKey>) -> String {
        k.into().resolve(2)
    }

    #[test]
    fn shorthands_follow_get_act_name() {
        assert_eq!(r(("pattern", 0)), "blocks.0.attn.hook_pattern");
        assert_eq!(r(("attn", 1)), "blocks.1.attn.hook_pattern");
        assert_eq!(r(("post", 0, "mlp")), "blocks.0.mlp.hook_post");
        assert_eq!(r(("post", -1)), "blocks.1.mlp.hook_post");
        assert_eq!(r("resid_pre1"), "blocks.1.hook_resid_pre");
        assert_eq!(r("post0"), "blocks.0.mlp.hook_post");
        assert_eq!(r("scale"), "ln_final.hook_scale");
        assert_eq!(r(("scale", 0, "ln1")), "blocks.0.ln1.hook_scale");
        assert_eq!(r(("resid_mid", 0, "b")), "blocks.0.hook_resid_mid");
        assert_eq!(r("embed"), "hook_embed");
        assert_eq!(r("blocks.0.attn.hook_z"), "blocks.0.attn.hook_z");
        assert_eq!(r("hook_pos_embed"), "hook_pos_embed");
    }

    #[test]
    fn close_matches_rank_by_edit_distance() {
        let known = [
            "blocks.0.attn.hook_pattern",
            "blocks.0.attn.hook_z",
            "hook_embed",
        ];
        assert_eq!(
            close_matches("blocks.0.attn.hook_patern", known)[0],
            "blocks.0.attn.hook_pattern"
        );
    }
}
