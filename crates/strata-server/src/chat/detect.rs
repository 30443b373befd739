//! vLLM's chat-template content format detection ("auto", its default):
//! a template that loops over a message's `content` (`{% for part in
//! message['content'] %}`, where `message` is a loop variable over
//! `messages` or over a variable assigned from it) takes content as
//! OpenAI's list of parts; any other template takes content as a string
//! (text parts joined with newlines). This follows vLLM's
//! `_detect_content_format` on the template's syntax tree: the same
//! accesses count (the variable itself, a slice of it, a filter or a test
//! applied to it; `x['content']` or `x.content` for the content), and a
//! template that does not parse, or that assigns such an access to
//! something other than a plain name, is "string".

use minijinja::machinery::ast::{Expr, Stmt};
use minijinja::machinery::{parse, WhitespaceConfig};

/// How message content reaches the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentFormat {
    /// A string: text parts joined with `\n`.
    String,
    /// OpenAI's list of `{"type": "text", "text": ...}` parts.
    OpenAi,
}

/// The content format a template expects.
pub fn detect(template: &str) -> ContentFormat {
    let ws =
        WhitespaceConfig { keep_trailing_newline: false, lstrip_blocks: true, trim_blocks: true };
    let Ok(ast) = parse(template, "chat", Default::default(), ws) else {
        return ContentFormat::String;
    };
    let mut sets = Vec::new();
    let mut loops = Vec::new();
    collect(&ast, &mut sets, &mut loops);
    detect_in(&sets, &loops).unwrap_or(ContentFormat::String)
}

/// `None` where vLLM's walk fails (an access assigned to a non-name).
fn detect_in(
    sets: &[(&Expr<'_>, &Expr<'_>)],
    loops: &[(&Expr<'_>, &Expr<'_>)],
) -> Option<ContentFormat> {
    // Variables that hold `messages` or part of it.
    let mut messages_vars = vec!["messages".to_owned()];
    let mut i = 0;
    while i < messages_vars.len() {
        let related = messages_vars[i].clone();
        for (target, value) in sets {
            if accesses(value, &related, None) {
                let name = name_of(target)?;
                if !messages_vars.iter().any(|v| v == name) {
                    messages_vars.push(name.to_owned());
                }
            }
        }
        i += 1;
    }
    // Loop variables over those: single messages.
    let mut message_vars = Vec::new();
    for (target, iter) in loops {
        if messages_vars.iter().any(|v| accesses(iter, v, None)) {
            message_vars.push(name_of(target)?.to_owned());
        }
    }
    // A loop over a message's content.
    for (target, iter) in loops {
        if message_vars.iter().any(|v| accesses(iter, v, Some("content"))) {
            name_of(target)?;
            return Some(ContentFormat::OpenAi);
        }
    }
    Some(ContentFormat::String)
}

fn name_of<'a>(e: &'a Expr<'_>) -> Option<&'a str> {
    match e {
        Expr::Var(v) => Some(v.id),
        _ => None,
    }
}

/// vLLM's `_is_var_or_elems_access`: `var` (or `var[key]` / `var.key`),
/// possibly sliced, filtered or tested.
fn accesses(e: &Expr<'_>, var: &str, key: Option<&str>) -> bool {
    match e {
        Expr::Filter(f) => f.expr.as_ref().is_some_and(|inner| accesses(inner, var, key)),
        Expr::Test(t) => accesses(&t.expr, var, key),
        Expr::Slice(s) => accesses(&s.expr, var, key),
        _ => match key {
            None => name_of(e) == Some(var),
            Some(key) => match e {
                Expr::GetItem(g) => {
                    name_of(&g.expr) == Some(var)
                        && matches!(&g.subscript_expr, Expr::Const(c) if c.value.as_str() == Some(key))
                }
                Expr::GetAttr(g) => name_of(&g.expr) == Some(var) && g.name == key,
                _ => false,
            },
        },
    }
}

/// Every `set` (target, value) and `for` (target, iterable) of the
/// template, in document order.
fn collect<'s, 'a>(
    stmt: &'s Stmt<'a>,
    sets: &mut Vec<(&'s Expr<'a>, &'s Expr<'a>)>,
    loops: &mut Vec<(&'s Expr<'a>, &'s Expr<'a>)>,
) {
    let all = |body: &'s [Stmt<'a>], sets: &mut Vec<_>, loops: &mut Vec<_>| {
        for s in body {
            collect(s, sets, loops);
        }
    };
    match stmt {
        Stmt::Template(t) => all(&t.children, sets, loops),
        Stmt::ForLoop(f) => {
            loops.push((&f.target, &f.iter));
            all(&f.body, sets, loops);
            all(&f.else_body, sets, loops);
        }
        Stmt::IfCond(c) => {
            all(&c.true_body, sets, loops);
            all(&c.false_body, sets, loops);
        }
        Stmt::WithBlock(w) => all(&w.body, sets, loops),
        Stmt::Set(s) => sets.push((&s.target, &s.expr)),
        Stmt::SetBlock(s) => all(&s.body, sets, loops),
        Stmt::AutoEscape(a) => all(&a.body, sets, loops),
        Stmt::FilterBlock(f) => all(&f.body, sets, loops),
        Stmt::Block(b) => all(&b.body, sets, loops),
        Stmt::Macro(m) => all(&m.body, sets, loops),
        Stmt::CallBlock(c) => all(&c.macro_decl.body, sets, loops),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_over_message_content_are_openai_format() {
        let openai = [
            "{% for m in messages %}{% for p in m['content'] %}{{ p.text }}{% endfor %}{% endfor %}",
            "{% for m in messages %}{% for p in m.content | selectattr('type', 'equalto', 'text') %}{% endfor %}{% endfor %}",
            "{% set loop_messages = messages[1:] %}{% for m in loop_messages %}{% for p in m.content %}{% endfor %}{% endfor %}",
            "{% set a = messages %}{% set b = a | list %}{% for m in b %}{% for p in m['content'] %}{% endfor %}{% endfor %}",
        ];
        for t in openai {
            assert_eq!(detect(t), ContentFormat::OpenAi, "{t}");
        }
        let string = [
            "{% for m in messages %}{{ m['content'] }}{% endfor %}",
            "{% for m in messages %}{% for p in m['parts'] %}{% endfor %}{% endfor %}",
            "{% set first = messages[0] %}{% for p in first.content %}{% endfor %}",
            "{% for m in messages %}{% set ns.c = messages %}{% for p in m.content %}{% endfor %}{% endfor %}",
            "{% for m in messages %",
        ];
        for t in string {
            assert_eq!(detect(t), ContentFormat::String, "{t}");
        }
    }
}
