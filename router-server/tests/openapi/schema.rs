//! `openapi.yaml` read, and a JSON value checked against one of its schemas (`$ref`s
//! resolved, `additionalProperties: false` enforced).

use serde_json::Value;

pub(crate) fn spec() -> Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.yaml")).unwrap();
    serde_yaml_ng::from_str(&text).unwrap()
}

pub(crate) fn resolve<'a>(spec: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let ptr = r.trim_start_matches('#');
            resolve(
                spec,
                spec.pointer(ptr)
                    .unwrap_or_else(|| panic!("dangling $ref {r}")),
            )
        }
        None => v,
    }
}

/// Validates `v` against the subset of JSON Schema the spec uses.
pub(crate) fn validate(spec: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(spec, schema);
    if v.is_null() {
        return if schema["nullable"] == true {
            Ok(())
        } else {
            Err(format!("{at}: null not allowed"))
        };
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            return Err(format!("{at}: {v} not in enum {e:?}"));
        }
    }
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    if let (Some(min), Some(x)) = (num("minimum"), v.as_f64()) {
        if x < min {
            return Err(format!("{at}: {x} < minimum {min}"));
        }
    }
    if let (Some(max), Some(x)) = (num("maximum"), v.as_f64()) {
        if x > max {
            return Err(format!("{at}: {x} > maximum {max}"));
        }
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let obj = v.as_object().ok_or(format!("{at}: not an object"))?;
            for req in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if !obj.contains_key(req.as_str().unwrap()) {
                    return Err(format!("{at}: missing required {req}"));
                }
            }
            let props = schema.get("properties").and_then(Value::as_object);
            for (k, val) in obj {
                match props.and_then(|p| p.get(k)) {
                    Some(s) => validate(spec, s, val, &format!("{at}.{k}"))?,
                    None if schema["additionalProperties"] == false => {
                        return Err(format!("{at}: undocumented field {k}"))
                    }
                    None => {}
                }
            }
        }
        Some("array") => {
            let arr = v.as_array().ok_or(format!("{at}: not an array"))?;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if (arr.len() as u64) < min {
                    return Err(format!("{at}: fewer than {min} items"));
                }
            }
            for (i, item) in arr.iter().enumerate() {
                validate(spec, &schema["items"], item, &format!("{at}[{i}]"))?;
            }
        }
        Some("string") if !v.is_string() => return Err(format!("{at}: not a string")),
        Some("integer") if !(v.is_i64() || v.is_u64()) => {
            return Err(format!("{at}: not an integer"))
        }
        Some("number") if !v.is_number() => return Err(format!("{at}: not a number")),
        Some("boolean") if !v.is_boolean() => return Err(format!("{at}: not a boolean")),
        _ => {}
    }
    Ok(())
}
