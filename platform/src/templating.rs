//! Email templates rendered with minijinja: the HTML body is auto-escaped,
//! the subject and text body are not. A template declares its variables;
//! a render must supply exactly those, so a typo is a 422 naming the
//! variable at request time, not a blank in a sent email.
//!
//! Rendering is bounded: each part may take at most [`FUEL`] steps of
//! minijinja's VM and write at most [`MAX_RENDERED_BYTES`], so a template
//! (`{% for i in range(100000) %}{% for j in range(100000) %}`...) cannot
//! hold a thread or fill memory with its output. A template that meets a
//! limit with placeholder values is refused when it is saved; one that
//! meets it only with a send's values fails that send (or campaign run).

use std::collections::BTreeSet;

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::{Map, Value};

/// Why a template cannot be checked or rendered; `field` names the part
/// (`subject`, `html_body`, `text_body`) or the variable (`variables.x`).
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{message}")]
pub struct TemplateError {
    /// `template_syntax_error`, `undeclared_variable`, `missing_variable`,
    /// `unknown_variable`, `template_render_error`, or one of the limits:
    /// `template_too_costly`, `template_output_too_large`.
    pub code: &'static str,
    pub field: String,
    pub message: String,
}

impl TemplateError {
    /// Whether a rendering limit was met (the template, not a variable's
    /// value, is usually at fault).
    pub fn is_limit(&self) -> bool {
        matches!(self.code, TOO_COSTLY | OUTPUT_TOO_LARGE)
    }

    fn new(code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        TemplateError {
            code,
            field: field.into(),
            message: message.into(),
        }
    }
}

const SUBJECT: &str = "subject.txt";
const HTML: &str = "body.html";
const TEXT: &str = "body.txt";

/// Most variables a template may declare.
pub const MAX_VARIABLES: usize = 100;

/// Steps of minijinja's VM one part may take to render: generous for an
/// email (a loop over thousands of items), a few tens of milliseconds of
/// CPU at most.
pub const FUEL: u64 = 1_000_000;

/// Bytes one rendered part may hold.
pub const MAX_RENDERED_BYTES: usize = 2 * 1024 * 1024;

const TOO_COSTLY: &str = "template_too_costly";
const OUTPUT_TOO_LARGE: &str = "template_output_too_large";

/// Names that templates may use without declaring them (minijinja globals).
const GLOBALS: &[&str] = &[
    "range",
    "dict",
    "namespace",
    "debug",
    "loop",
    "true",
    "false",
    "none",
];

/// A template's three parts.
pub struct Sources<'a> {
    pub subject: &'a str,
    pub html: &'a str,
    pub text: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct Rendered {
    pub subject: String,
    pub html: String,
    pub text: Option<String>,
}

fn environment<'a>(sources: &Sources<'a>) -> Result<Environment<'a>, TemplateError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    let parts = [
        (SUBJECT, "subject", Some(sources.subject)),
        (HTML, "html_body", Some(sources.html)),
        (TEXT, "text_body", sources.text),
    ];
    for (name, field, source) in parts {
        if let Some(source) = source {
            env.add_template(name, source).map_err(|e| {
                TemplateError::new(
                    "template_syntax_error",
                    field,
                    format!("{field} is not a valid template: {e}"),
                )
            })?;
        }
    }
    Ok(env)
}

/// Checks a template's syntax and that it uses only declared variables.
pub fn check(sources: &Sources<'_>, declared: &[String]) -> Result<(), TemplateError> {
    let env = environment(sources)?;
    let declared: BTreeSet<&str> = declared.iter().map(String::as_str).collect();
    for (name, field) in [
        (SUBJECT, "subject"),
        (HTML, "html_body"),
        (TEXT, "text_body"),
    ] {
        let Ok(template) = env.get_template(name) else {
            continue;
        };
        let mut used: Vec<String> = template.undeclared_variables(false).into_iter().collect();
        used.sort();
        if let Some(undeclared) = used
            .iter()
            .find(|v| !declared.contains(v.as_str()) && !GLOBALS.contains(&v.as_str()))
        {
            return Err(TemplateError::new(
                "undeclared_variable",
                field,
                format!("{field} uses the variable {undeclared:?}, which is not in `variables`"),
            ));
        }
    }
    // A trial render with every variable empty: a template that meets a
    // limit without any help from its values is refused now, not at the
    // first send. Other errors depend on the values and are left to those.
    let placeholders: Map<String, Value> = declared
        .iter()
        .map(|v| (v.to_string(), Value::String(String::new())))
        .collect();
    let declared: Vec<String> = declared.iter().map(|v| v.to_string()).collect();
    match Renderer::new(sources, &declared)?.render(&placeholders) {
        Err(e) if e.is_limit() => Err(e),
        _ => Ok(()),
    }
}

/// Renders with `variables`, which must hold exactly the declared ones.
pub fn render(
    sources: &Sources<'_>,
    declared: &[String],
    variables: &Map<String, Value>,
) -> Result<Rendered, TemplateError> {
    check_variables(declared, variables)?;
    Renderer::new(sources, declared)?.render(variables)
}

fn check_variables(
    declared: &[String],
    variables: &Map<String, Value>,
) -> Result<(), TemplateError> {
    if let Some(missing) = declared
        .iter()
        .find(|v| !variables.contains_key(v.as_str()))
    {
        return Err(TemplateError::new(
            "missing_variable",
            format!("variables.{missing}"),
            format!("the template needs the variable {missing:?}"),
        ));
    }
    if let Some(unknown) = variables.keys().find(|k| !declared.iter().any(|d| d == *k)) {
        return Err(TemplateError::new(
            "unknown_variable",
            format!("variables.{unknown}"),
            format!("the template has no variable {unknown:?}"),
        ));
    }
    Ok(())
}

/// Rendered output that refuses to grow past [`MAX_RENDERED_BYTES`].
#[derive(Default)]
struct Capped {
    bytes: Vec<u8>,
    exceeded: bool,
}

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED_BYTES {
            self.exceeded = true;
            return Err(std::io::Error::other("rendered output over the limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A template parsed once and rendered many times (a campaign's fan-out).
pub struct Renderer<'a> {
    env: Environment<'a>,
    declared: &'a [String],
    has_text: bool,
}

impl<'a> Renderer<'a> {
    pub fn new(sources: &Sources<'a>, declared: &'a [String]) -> Result<Self, TemplateError> {
        Ok(Renderer {
            env: environment(sources)?,
            declared,
            has_text: sources.text.is_some(),
        })
    }

    /// Renders with `variables`, which must hold exactly the declared ones.
    pub fn render(&self, variables: &Map<String, Value>) -> Result<Rendered, TemplateError> {
        check_variables(self.declared, variables)?;
        let context = minijinja::Value::from_serialize(variables);
        let render = |name: &str, field: &str| -> Result<String, TemplateError> {
            let mut out = Capped::default();
            let rendered = self
                .env
                .get_template(name)
                .and_then(|t| t.render_captured_to(&context, &mut out).map(|_| ()));
            match rendered {
                Ok(_) => String::from_utf8(out.bytes).map_err(|_| {
                    TemplateError::new(
                        "template_render_error",
                        field,
                        format!("{field} did not render to UTF-8"),
                    )
                }),
                Err(_) if out.exceeded => Err(TemplateError::new(
                    OUTPUT_TOO_LARGE,
                    field,
                    format!("{field} renders to more than {MAX_RENDERED_BYTES} bytes, the limit"),
                )),
                Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => Err(TemplateError::new(
                    TOO_COSTLY,
                    field,
                    format!("{field} takes more than {FUEL} rendering steps, the limit (a loop too long?)"),
                )),
                Err(e) => Err(TemplateError::new(
                    "template_render_error",
                    field,
                    format!("cannot render {field}: {e}"),
                )),
            }
        };
        Ok(Rendered {
            subject: render(SUBJECT, "subject")?,
            html: render(HTML, "html_body")?,
            text: if self.has_text {
                Some(render(TEXT, "text_body")?)
            } else {
                None
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped_subject_and_text_are_not() {
        let sources = Sources {
            subject: "Hi {{ name }}",
            html: "<p>{{ name }}</p>",
            text: Some("Hi {{ name }}"),
        };
        let declared = vec!["name".to_string()];
        check(&sources, &declared).unwrap();
        let mut vars = Map::new();
        vars.insert("name".into(), Value::String("<b>&</b>".into()));
        let r = render(&sources, &declared, &vars).unwrap();
        assert_eq!(r.subject, "Hi <b>&</b>");
        assert_eq!(r.html, "<p>&lt;b&gt;&amp;&lt;&#x2f;b&gt;</p>");
        assert_eq!(r.text.as_deref(), Some("Hi <b>&</b>"));
    }

    #[test]
    fn undeclared_and_missing_variables_are_named() {
        let sources = Sources {
            subject: "{{ a }}",
            html: "{{ b }}",
            text: None,
        };
        let e = check(&sources, &["a".to_string()]).unwrap_err();
        assert!(e.to_string().contains("\"b\""), "{e}");
        let e = render(&sources, &["a".into(), "b".into()], &Map::new()).unwrap_err();
        assert!(e.to_string().contains("\"a\""), "{e}");
    }

    #[test]
    fn a_runaway_loop_is_refused_at_save_within_its_fuel() {
        let sources = Sources {
            subject: "Hi",
            html:
                "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            text: None,
        };
        let started = std::time::Instant::now();
        let e = check(&sources, &[]).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            ("template_too_costly", "html_body"),
            "{e}"
        );
        assert!(e.is_limit());
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn output_beyond_the_cap_is_refused_and_a_loop_driven_by_a_variable_fails_its_render() {
        let big = Sources {
            subject: "Hi",
            html: "{{ 'x' * 3000000 }}",
            text: None,
        };
        let e = check(&big, &[]).unwrap_err();
        assert_eq!(e.code, "template_output_too_large", "{e}");

        // Harmless with placeholder values, so it can be saved; a send
        // whose value makes it run away fails with the limit named.
        let driven = Sources {
            subject: "Hi",
            html: "{% for i in range(n|int) %}{% for j in range(n|int) %}x{% endfor %}{% endfor %}",
            text: None,
        };
        let declared = vec!["n".to_string()];
        check(&driven, &declared).unwrap();
        let mut vars = Map::new();
        vars.insert("n".into(), Value::from(100000));
        let e = render(&driven, &declared, &vars).unwrap_err();
        assert_eq!(e.code, "template_too_costly", "{e}");
        vars.insert("n".into(), Value::from(3));
        assert_eq!(render(&driven, &declared, &vars).unwrap().html, "xxxxxxxxx");
    }
}
