//! The command list and the texts of the simple commands.
//!
//! The same list is registered with setMyCommands at start and printed by
//! /help, so the menu in Telegram and the help text never disagree.

use crate::telegram::types::BotCommand;

/// Commands shown to every user.
pub const COMMANDS: &[(&str, &str)] = &[
    ("start", "Start the bot"),
    ("help", "What the bot can do"),
    ("stats", "Your own figures"),
    ("reset", "Forget our conversation"),
    ("report", "Our conversation as a PDF"),
    ("pdf", "The photos you sent as one PDF"),
];

/// A question while the user's earlier ones are still being answered.
pub const ONE_AT_A_TIME: &str =
    "I am still answering your earlier questions. Please wait for those answers first.";

/// Appended to an answer the user stopped.
pub const STOPPED: &str = "(stopped)";

/// Appended to an answer the backend broke off.
pub const CUT_OFF: &str =
    "(The answer was cut off: the assistant stopped responding. Please ask again.)";

pub const NOT_AN_IMAGE: &str =
    "I can only use photos and JPEG or PNG images sent as files. Send /help to see what I can do.";

pub const NOTHING_TO_REPORT: &str =
    "There is nothing to report yet: ask me something first, then send /report.";

pub const NO_PHOTOS: &str = "Send me one or more photos first, then /pdf to get them as one PDF.";

pub const PDF_BUSY: &str =
    "I am making a lot of PDFs right now and cannot take yours. Please try again in a few minutes.";

/// The answer to a message that made the bot fail every time it tried.
pub const POISON: &str = "Sorry, something in that message keeps making me fail, so I have set it aside. \
Please try sending it differently.";
pub const TRY_AGAIN: &str = "Something went wrong on my side. Please try again in a minute.";

/// `1 page`, `3 pages`.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

pub fn photo_added(count: usize) -> String {
    let photos = self::count(count, "photo", "photos");
    format!("Got it: {photos} collected. Send more, or /pdf to get them as one PDF.")
}

pub fn photo_failed(name: &str) -> String {
    format!("Something went wrong with {name}; it was not added. Please send it again.")
}

pub fn too_many_photos(max: usize) -> String {
    format!("You have {max} photos collected, the most one PDF can hold. Send /pdf first.")
}

/// Where a job stands when others are ahead of it.
pub fn queue_position(ahead: usize, wait: Option<std::time::Duration>) -> String {
    let place = ahead + 1;
    match wait {
        Some(wait) => format!(
            "You are number {place} in the queue; your PDF should be ready in about {} seconds.",
            wait.as_secs().max(1)
        ),
        None => format!("You are number {place} in the queue; your PDF will follow shortly."),
    }
}

pub const RESET_TEXT: &str = "Done: I have forgotten our conversation. We start afresh.";

pub fn bot_commands() -> Vec<BotCommand> {
    COMMANDS
        .iter()
        .map(|(command, description)| BotCommand {
            command: (*command).to_string(),
            description: (*description).to_string(),
            is_ephemeral: None,
        })
        .collect()
}

/// A command found at the start of a message: its name, lower-cased and
/// without a `@botname` suffix, and its argument text.
#[derive(Debug, PartialEq, Eq)]
pub struct Command<'a> {
    pub name: String,
    pub args: &'a str,
}

/// Parses `/name@bot args`; `None` for text that is not a command, or a
/// command addressed to another bot.
pub fn parse<'a>(text: &'a str, bot_username: &str) -> Option<Command<'a>> {
    let rest = text.strip_prefix('/')?;
    let (head, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let (name, target) = head.split_once('@').unwrap_or((head, ""));
    if name.is_empty() || !target.is_empty() && !target.eq_ignore_ascii_case(bot_username) {
        return None;
    }
    Some(Command {
        name: name.to_ascii_lowercase(),
        args: args.trim(),
    })
}

/// Whether `text` is a command addressed to another bot (`/report@otherbot`):
/// in a group it is that bot's business, neither a command nor a question.
pub fn for_another_bot(text: &str, bot_username: &str) -> bool {
    let Some(rest) = text.strip_prefix('/') else {
        return false;
    };
    let head = rest.split(char::is_whitespace).next().unwrap_or(rest);
    head.split_once('@').is_some_and(|(name, target)| {
        !name.is_empty() && !target.eq_ignore_ascii_case(bot_username)
    })
}

pub fn start_text(first_name: &str) -> String {
    format!("Hello, {first_name}! I am actorbot.\n\nSend /help to see what I can do.")
}

pub fn help_text() -> String {
    let mut text = String::from("Commands:\n");
    for (command, description) in COMMANDS {
        text.push_str(&format!("/{command} — {description}\n"));
    }
    text
}

pub fn unknown_text(name: &str) -> String {
    format!("I don't know the command /{name}. Send /help for the list.")
}

/// The user's own figures for /stats.
pub fn stats_text(record: &crate::storage::UserRecord) -> String {
    format!(
        "Your figures:\nMessages: {}\nAI questions: {}\nReports: {}\nFirst seen: {}\nLast seen: {}",
        record.messages,
        record.ai_questions,
        record.reports,
        format_millis(record.first_seen),
        format_millis(record.last_seen),
    )
}

/// A time for people: `2026-11-24 12:45 UTC`.
pub fn format_millis(millis: i64) -> String {
    let nanos = i128::from(millis) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => "unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(
            parse("/start", "actorbot"),
            Some(Command {
                name: "start".into(),
                args: ""
            })
        );
        assert_eq!(
            parse("/Help@ActorBot  me  ", "actorbot"),
            Some(Command {
                name: "help".into(),
                args: "me"
            })
        );
        assert_eq!(parse("/start@otherbot", "actorbot"), None);
        assert_eq!(parse("hello /start", "actorbot"), None);
        assert_eq!(parse("/", "actorbot"), None);
    }

    #[test]
    fn times_are_formatted_in_utc() {
        assert_eq!(format_millis(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_millis(1_795_524_300_000), "2026-11-24 12:45 UTC");
    }

    #[test]
    fn help_lists_every_command() {
        let help = help_text();
        for (command, _) in COMMANDS {
            assert!(help.contains(&format!("/{command}")));
        }
    }
}
