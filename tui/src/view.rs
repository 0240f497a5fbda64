//! Drawing the [`App`]: conversations on the left, the open conversation on the right,
//! the input line and a status line at the bottom. Fits 80×24 and narrower terminals
//! (the list takes a third of the width, at most 24 columns).

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use letstalk_ipc::types::{Direction, Message, MessageKind, MessageState, Presence};

use crate::model::{App, Link, transfer_word};

/// Draws the whole screen.
pub fn draw(frame: &mut Frame<'_>, app: &App) {
    let [main, input, status] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(3), Constraint::Length(1)])
            .areas(frame.area());
    let list_width = (main.width / 3).min(24);
    let [list, chat] =
        Layout::horizontal([Constraint::Length(list_width), Constraint::Min(10)]).areas(main);
    draw_list(frame, app, list);
    draw_chat(frame, app, chat);
    draw_input(frame, app, input);
    draw_status(frame, app, status);
    if let Some((title, lines)) = &app.popup {
        draw_popup(frame, title, lines);
    }
}

fn draw_list(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let block = Block::bordered().title(" Chats ");
    let inner = block.inner(area);
    let width = usize::from(inner.width);
    let selected = app.selected();
    let lines: Vec<Line<'_>> = app
        .rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let mark = match app.presence_of(&row.conversation) {
                Some(Presence::Online) => '●',
                Some(Presence::Offline) => '○',
                _ if row.conversation.starts_with("group:") => '#',
                _ => ' ',
            };
            let count = match (row.unread, row.muted) {
                (0, true) => "~".to_owned(),
                (0, false) => String::new(),
                (n, _) => format!("({n})"),
            };
            let room = width.saturating_sub(2 + count.width() + 1);
            let text = format!("{mark} {:<room$} {count}", clip(&row.title, room));
            let mut style = Style::new();
            if Some(i) == selected {
                style = style.add_modifier(Modifier::REVERSED);
            }
            if row.unread > 0 {
                style = style.add_modifier(Modifier::BOLD);
            }
            Line::styled(text, style)
        })
        .collect();
    let skip = selected.map_or(0, |s| (s + 1).saturating_sub(usize::from(inner.height)));
    frame.render_widget(Paragraph::new(lines).scroll((clamp_u16(skip), 0)).block(block), area);
}

fn draw_chat(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let title = match &app.open {
        None => " no conversation open: /open USER ".to_owned(),
        Some(c) => {
            let presence = match app.presence_of(c) {
                Some(Presence::Online) => " · online",
                Some(Presence::Offline) => " · offline",
                _ => "",
            };
            format!(" {}{presence} ", app.title_of(c))
        }
    };
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    let lines = message_lines(app, usize::from(inner.width));
    let height = usize::from(inner.height);
    let end = lines.len().saturating_sub(app.scroll.min(lines.len().saturating_sub(height)));
    let start = end.saturating_sub(height);
    // The newest message sits at the bottom, as in every chat.
    let mut shown: Vec<Line<'static>> = vec![Line::raw(""); height.saturating_sub(end - start)];
    shown.extend_from_slice(&lines[start..end]);
    frame.render_widget(Paragraph::new(shown).block(block), area);
}

fn draw_input(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let block = Block::bordered();
    let inner = block.inner(area);
    let room = usize::from(inner.width).saturating_sub(3);
    // The end of a long line stays in view.
    let mut shown = String::new();
    let mut width = 0;
    for c in app.input.chars().rev() {
        width += c.width().unwrap_or(0);
        if width > room {
            break;
        }
        shown.insert(0, c);
    }
    let cursor_x = inner.x + 2 + clamp_u16(shown.width());
    frame.render_widget(Paragraph::new(format!("> {shown}")).block(block), area);
    if app.popup.is_none() {
        frame.set_cursor_position(Position::new(cursor_x, inner.y));
    }
}

fn draw_status(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let link = match &app.link {
        Link::Connecting => "connecting…".to_owned(),
        Link::Connected => match app.relay.as_deref() {
            Some("connected") | None => "connected".to_owned(),
            Some(relay) => format!("relay {relay}"),
        },
        Link::Down(why) => format!("daemon unreachable ({why}), retrying"),
    };
    let room = usize::from(area.width).saturating_sub(link.width() + 3);
    let line = Line::from(vec![
        Span::styled(format!("[{link}] "), Style::new().add_modifier(Modifier::DIM)),
        Span::raw(clip(&app.status, room)),
    ]);
    frame.render_widget(Paragraph::new(line), area);
}

fn draw_popup(frame: &mut Frame<'_>, title: &str, lines: &[String]) {
    let area = frame.area();
    let width = lines.iter().map(|l| l.width()).max().unwrap_or(0) + 4;
    let width = clamp_u16(width).min(area.width);
    let height = clamp_u16(lines.len() + 2).min(area.height);
    let rect = Rect::new(
        area.x + (area.width - width) / 2,
        area.y + (area.height - height) / 2,
        width,
        height,
    );
    let text: Vec<Line<'_>> = lines.iter().map(|l| Line::raw(format!(" {l}"))).collect();
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(text).block(Block::bordered().title(format!(" {title} "))),
        rect,
    );
}

/// The open conversation as lines of at most `width` columns, oldest first.
pub fn message_lines(app: &App, width: usize) -> Vec<Line<'static>> {
    let mut out = Vec::new();
    for m in &app.messages {
        let (head, body, tail) = parts(app, m);
        let style = match m.kind {
            MessageKind::System => Style::new().add_modifier(Modifier::ITALIC),
            _ if m.direction == Direction::Out => Style::new(),
            _ => Style::new().add_modifier(Modifier::BOLD),
        };
        let text = format!("{head}{body}{tail}");
        for (i, piece) in wrap(&text, width).into_iter().enumerate() {
            // The time and name are dim on the first line; the rest is the message.
            let split = if i == 0 { head.len().min(piece.len()) } else { 0 };
            let (h, rest) = piece.split_at(split);
            out.push(Line::from(vec![
                Span::styled(h.to_owned(), Style::new().add_modifier(Modifier::DIM)),
                Span::styled(rest.to_owned(), style),
            ]));
        }
    }
    out
}

/// A message as time and sender, content, and delivery state.
fn parts(app: &App, m: &Message) -> (String, String, String) {
    let minutes = m.created_at.div_euclid(60_000);
    let time =
        format!("{:02}:{:02}", minutes.div_euclid(60).rem_euclid(24), minutes.rem_euclid(60));
    let who = match m.direction {
        Direction::Out => "me".to_owned(),
        Direction::In => app.name_of(&m.from),
    };
    let head = if m.kind == MessageKind::System {
        format!("{time} * ")
    } else {
        format!("{time} {who}: ")
    };
    let mut body = m.text.clone().unwrap_or_default();
    if let Some(f) = &m.file {
        let progress = match app.transfers.get(&m.message_id) {
            Some(p) => format!(" {}%", p.percent()),
            None => f.transfer.map(|t| format!(" {}", transfer_word(t))).unwrap_or_default(),
        };
        let file = format!("[file {} {}{progress}]", f.name, size(f.size));
        body = if body.is_empty() { file } else { format!("{file} {body}") };
    } else if m.kind == MessageKind::Call && body.is_empty() {
        body = "[call]".to_owned();
    }
    let tail = match (m.direction, m.state) {
        (Direction::In, _) => "",
        (Direction::Out, MessageState::Queued) => " …",
        (Direction::Out, MessageState::Sent) => " ✓",
        (Direction::Out, MessageState::Delivered) => " ✓✓",
        (Direction::Out, MessageState::Read) => " ✓✓ read",
        (Direction::Out, MessageState::Failed) => " ✗ failed",
    };
    (head, body, tail.to_owned())
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{} KiB", b / 1024),
        b => format!("{} MiB", b / (1024 * 1024)),
    }
}

/// Wraps `text` into lines of at most `width` columns, at spaces where it can, inside a
/// word where it must. Newlines in the text start a new line.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut out = Vec::new();
    for paragraph in text.split('\n') {
        let mut line = String::new();
        let mut line_width = 0;
        for word in paragraph.split(' ') {
            let w = word.width();
            let gap = usize::from(!line.is_empty());
            if line_width + gap + w <= width {
                if gap == 1 {
                    line.push(' ');
                }
                line.push_str(word);
                line_width += gap + w;
                continue;
            }
            if !line.is_empty() {
                out.push(std::mem::take(&mut line));
                line_width = 0;
            }
            for c in word.chars() {
                let cw = c.width().unwrap_or(0);
                if line_width + cw > width {
                    out.push(std::mem::take(&mut line));
                    line_width = 0;
                }
                line.push(c);
                line_width += cw;
            }
        }
        out.push(line);
    }
    out
}

/// `text` cut to `width` columns, with `…` when cut.
fn clip(text: &str, width: usize) -> String {
    if text.width() <= width {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    if width > 0 {
        out.push('…');
    }
    out
}

fn clamp_u16(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use letstalk_ipc::types::ConversationSummary;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;
    use crate::model::tests::message;
    use crate::model::{Key, Reply};

    fn screen(app: &App, w: u16, h: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        terminal.draw(|f| draw(f, app)).unwrap();
        let buffer = terminal.backend().buffer();
        buffer
            .content
            .chunks(usize::from(w))
            .map(|row| row.iter().map(|c| c.symbol()).collect::<String>())
            .collect()
    }

    fn app_with_chat() -> App {
        let mut app = App::new(Some("bob"), "t");
        app.connected(0);
        app.apply_reply(Reply::Conversations(vec![
            ConversationSummary {
                conversation: "user:bob".into(),
                title: "Bob Builder".into(),
                unread: 0,
                last_message: None,
                muted: false,
            },
            ConversationSummary {
                conversation: "user:carol".into(),
                title: "carol".into(),
                unread: 3,
                last_message: None,
                muted: false,
            },
        ]));
        app.presence.insert("bob".into(), Presence::Online);
        let mut out = message("m2", "user:bob", Direction::Out, "fine, and you?");
        out.state = MessageState::Delivered;
        app.apply_reply(Reply::Messages {
            conversation: "user:bob".into(),
            messages: vec![message("m1", "user:bob", Direction::In, "how are you"), out],
        });
        app
    }

    #[test]
    fn tui_an_80x24_screen_shows_the_list_the_chat_and_the_input() {
        let mut app = app_with_chat();
        for c in "typing this".chars() {
            app.handle_key(Key::Char(c));
        }
        let rows = screen(&app, 80, 24);
        let all = rows.join("\n");
        assert!(all.contains("● Bob Builder"), "{all}");
        assert!(all.contains("carol") && all.contains("(3)"), "{all}");
        assert!(all.contains("bob: how are you"), "{all}");
        assert!(all.contains("me: fine, and you? ✓✓"), "{all}");
        assert!(all.contains("Bob Builder · online"), "{all}");
        assert!(rows[21].contains("> typing this"), "{all}");
        assert!(rows[23].contains("[connected]"), "{all}");
        // The newest message is at the bottom of the chat pane.
        assert!(rows[18].contains("fine, and you?"), "{all}");
    }

    #[test]
    fn tui_long_histories_scroll_and_fit_narrow_terminals() {
        let mut app = app_with_chat();
        for i in 0..40 {
            let id = format!("n{i:03}");
            let m = message(&id, "user:bob", Direction::In, &format!("line number {i}"));
            app.apply_reply(Reply::Sent(Box::new(m)));
        }
        let all = screen(&app, 80, 24).join("\n");
        assert!(all.contains("line number 39") && !all.contains("line number 20"), "{all}");
        app.handle_key(Key::PageUp);
        let all = screen(&app, 80, 24).join("\n");
        assert!(all.contains("line number 20") && !all.contains("line number 39"), "{all}");
        // A phone's terminal: 40 columns; nothing panics, the message wraps.
        app.scroll = 0;
        let long = "a long message that has to wrap over several lines here";
        app.apply_reply(Reply::Sent(Box::new(message("z0000", "user:bob", Direction::In, long))));
        let all = screen(&app, 40, 20).join("\n");
        assert!(all.contains("several"), "{all}");
    }

    #[test]
    fn tui_the_safety_number_popup_fits_80_columns() {
        let mut app = app_with_chat();
        let number = "12345 67890 12345 67890 12345 67890 12345 67890 12345 67890 12345 09876";
        app.apply_reply(Reply::Verified {
            user_id: "bob".into(),
            safety_number: number.into(),
            verified: true,
        });
        let all = screen(&app, 80, 24).join("\n");
        assert!(all.contains("12345 67890 12345 09876"), "{all}");
        assert!(all.contains("Verified."), "{all}");
    }

    #[test]
    fn tui_wrap_breaks_at_spaces_and_inside_long_words() {
        assert_eq!(wrap("hello big world", 9), ["hello big", "world"]);
        assert_eq!(wrap("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("a\nb", 10), ["a", "b"]);
        assert_eq!(wrap("", 10), [""]);
        assert_eq!(clip("conversation", 6), "conve…");
    }
}
