//! Photos and PDF jobs: a photo is checked when it arrives (downloaded,
//! decoded, processed and cached for /pdf) so that a broken one is named at
//! once; /report loads the conversation; both end in a job for the PDF
//! jobs actor, whose answer [`super::state`] turns into the reply.

use actix::prelude::*;

use super::Session;
use super::state::JobAnswer;
use crate::bot::commands;
use crate::images::{PhotoRef, Prepare};
use crate::pdf::jobs::{Accepted, JobSpec, Refused, SubmitJob};
use crate::telegram::update::RawUpdate;

/// Exchanges a report may hold at most (the page cap usually ends it first).
const REPORT_TURNS: i64 = 5000;

impl Session {
    pub(super) fn check_photo(
        &mut self,
        update: &RawUpdate,
        photo: PhotoRef,
        priority: u8,
        ctx: &mut Context<Self>,
    ) {
        let prepare = self.deps.documents.images.send(Prepare {
            photo: photo.clone(),
            priority,
        });
        let update = update.clone();
        // Held mailbox: a /pdf right after the photo must find it collected.
        ctx.wait(prepare.into_actor(self).map(move |prepared, this, ctx| {
            let checked = match prepared {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(err)) => Err(err.user_text(&photo.name)),
                Err(_) => Err(commands::photo_failed(&photo.name)),
            };
            let effects = this.chat.photo_checked(photo, checked);
            this.apply(&update, effects, ctx);
        }));
    }

    pub(super) fn load_report(
        &mut self,
        update: &RawUpdate,
        user_name: String,
        ctx: &mut Context<Self>,
    ) {
        let storage = self.deps.storage.clone();
        let user_id = self.chat_id;
        let update = update.clone();
        ctx.wait(
            async move { storage.turns_recent(user_id, REPORT_TURNS).await }
                .into_actor(self)
                .map(move |turns, this, ctx| {
                    let turns = match turns {
                        Ok(turns) => {
                            Some(turns.into_iter().map(|t| (t.question, t.answer)).collect())
                        }
                        Err(err) => {
                            log::warn!("chat_id={user_id}: could not load the conversation: {err}");
                            None
                        }
                    };
                    let effects = this.chat.report_loaded(user_name, turns);
                    this.apply(&update, effects, ctx);
                }),
        );
    }

    pub(super) fn submit_job(
        &mut self,
        update: &RawUpdate,
        spec: JobSpec,
        ctx: &mut Context<Self>,
    ) {
        let submit = self.deps.documents.pdf.send(SubmitJob {
            user_id: self.chat_id,
            chat_id: self.chat_id,
            admin: self.chat.admin,
            spec: spec.clone(),
        });
        let update = update.clone();
        ctx.wait(submit.into_actor(self).map(move |answer, this, ctx| {
            let answer = match answer {
                Ok(Ok(Accepted { position, .. })) => JobAnswer::Accepted {
                    ahead: position.map(|p| p.ahead),
                    wait: position.and_then(|p| p.estimated_wait),
                },
                Ok(Err(Refused::Busy)) => JobAnswer::Busy,
                Ok(Err(Refused::Storage(_) | Refused::Ended)) | Err(_) => JobAnswer::Failed,
            };
            let effects = this.chat.job_answered(spec, answer);
            this.apply(&update, effects, ctx);
        }));
    }
}
