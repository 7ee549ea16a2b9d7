//! The report's words, in English and French.

use super::human_duration as d;
use super::{Outcome, ServiceStatus};
use crate::event::StepStatus;
use crate::runbook::Mode;

/// The language of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    En,
    Fr,
}

impl Lang {
    pub fn labels(self) -> &'static Labels {
        match self {
            Lang::En => &EN,
            Lang::Fr => &FR,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Fr => "fr",
        }
    }
}

/// Every fixed word of a report.
pub struct Labels {
    pub lang: Lang,
    pub title: &'static str,
    /// ": " in English, " : " in French.
    pub colon: &'static str,
    pub summary: &'static str,
    pub run: &'static str,
    pub mode: &'static str,
    pub sites: &'static str,
    pub started: &'static str,
    pub ended: &'static str,
    pub not_ended: &'static str,
    pub duration: &'static str,
    pub estimated: &'static str,
    pub incident: &'static str,
    pub operator: &'static str,
    pub machine: &'static str,
    pub result: &'static str,
    pub measured_from_incident: &'static str,
    pub measured_from_start: &'static str,
    pub resumed_by: &'static str,
    pub points_asked: &'static str,
    pub services: &'static str,
    /// Above what proved each health check that passed.
    pub checks_proved: &'static str,
    pub service: &'static str,
    pub status: &'static str,
    pub rto_target: &'static str,
    pub rto_achieved: &'static str,
    pub rpo_target: &'static str,
    pub data_loss: &'static str,
    pub point: &'static str,
    pub steps: &'static str,
    pub met: &'static str,
    pub missed: &'static str,
    pub not_measured: &'static str,
    /// Why a lag is unknown when its probe never ran.
    pub lag_not_run: &'static str,
    /// Why a failback's lag is unknown when the service has no probe of the reverse direction.
    pub lag_no_failback_probe: &'static str,
    pub none: &'static str,
    pub unverified: &'static str,
    pub timeline: &'static str,
    pub timeline_note: &'static str,
    pub critical_path: &'static str,
    pub legend_done: &'static str,
    pub legend_failed: &'static str,
    pub legend_wait: &'static str,
    pub legend_cleanup: &'static str,
    pub legend_critical: &'static str,
    pub manual: &'static str,
    pub step: &'static str,
    pub instructions: &'static str,
    pub asked: &'static str,
    pub confirmed_by: &'static str,
    pub confirmed_at: &'static str,
    pub waited: &'static str,
    pub note: &'static str,
    pub not_confirmed: &'static str,
    pub problems: &'static str,
    pub no_problems: &'static str,
    pub recommendations: &'static str,
    pub no_recommendations: &'static str,
    pub readiness: &'static str,
    pub ready: &'static str,
    pub not_ready: &'static str,
    pub evidence: &'static str,
    pub run_id: &'static str,
    pub tool_version: &'static str,
    pub sources_digest: &'static str,
    pub journal_digest: &'static str,
    pub events: &'static str,
    pub people: &'static str,
    pub evidence_note: &'static str,
    pub blocked_default: &'static str,
    pub not_involved: &'static str,
    pub rec_no_readiness: &'static str,
    pub rec_no_drill: &'static str,
}

impl Labels {
    /// A duration for people, in this language (`1d 02h` is `1j 02h` in French).
    pub fn dur(&self, secs: f64) -> String {
        let text = d(secs);
        match self.lang {
            Lang::En => text,
            Lang::Fr => text.replace('d', "j"),
        }
    }

    pub fn mode(&self, mode: Mode, emergency: bool) -> &'static str {
        match (self.lang, mode, emergency) {
            (Lang::En, Mode::Drill, _) => "Failover drill",
            (Lang::En, Mode::Failover, false) => "Planned failover",
            (Lang::En, Mode::Failover, true) => "Emergency failover",
            (Lang::En, Mode::Restore, _) => "Restore (cold start)",
            (Lang::En, Mode::Failback, _) => "Failback",
            (Lang::Fr, Mode::Drill, _) => "Exercice de bascule",
            (Lang::Fr, Mode::Failover, false) => "Bascule planifiée",
            (Lang::Fr, Mode::Failover, true) => "Bascule d'urgence",
            (Lang::Fr, Mode::Restore, _) => "Redémarrage (démarrage à froid)",
            (Lang::Fr, Mode::Failback, _) => "Retour sur le site principal",
        }
    }

    pub fn outcome(&self, o: Outcome) -> &'static str {
        match (self.lang, o) {
            (Lang::En, Outcome::Recovered) => "Recovered",
            (Lang::En, Outcome::RecoveredWithIssues) => "Recovered with issues",
            (Lang::En, Outcome::PartiallyRecovered) => "Partially recovered",
            (Lang::En, Outcome::Failed) => "Failed",
            (Lang::En, Outcome::Incomplete) => "Incomplete: the run stopped before its end",
            (Lang::Fr, Outcome::Recovered) => "Rétabli",
            (Lang::Fr, Outcome::RecoveredWithIssues) => "Rétabli avec des problèmes",
            (Lang::Fr, Outcome::PartiallyRecovered) => "Partiellement rétabli",
            (Lang::Fr, Outcome::Failed) => "Échec",
            (Lang::Fr, Outcome::Incomplete) => "Incomplet : l'opération s'est arrêtée avant la fin",
        }
    }

    pub fn service_status(&self, s: ServiceStatus) -> &'static str {
        match (self.lang, s) {
            (Lang::En, ServiceStatus::Recovered) => "recovered",
            (Lang::En, ServiceStatus::Failed) => "failed",
            (Lang::En, ServiceStatus::Blocked) => "blocked",
            (Lang::En, ServiceStatus::RolledBack) => "rolled back",
            (Lang::En, ServiceStatus::Cancelled) => "cancelled",
            (Lang::En, ServiceStatus::NotFinished) => "not finished",
            (Lang::En, ServiceStatus::NothingToDo) => "nothing to do",
            (Lang::En, ServiceStatus::AnsweredInPlace) => "answered in place (not moved)",
            (Lang::Fr, ServiceStatus::Recovered) => "rétabli",
            (Lang::Fr, ServiceStatus::Failed) => "en échec",
            (Lang::Fr, ServiceStatus::Blocked) => "bloqué",
            (Lang::Fr, ServiceStatus::RolledBack) => "annulé (retour arrière)",
            (Lang::Fr, ServiceStatus::Cancelled) => "interrompu",
            (Lang::Fr, ServiceStatus::NotFinished) => "non terminé",
            (Lang::Fr, ServiceStatus::NothingToDo) => "rien à faire",
            (Lang::Fr, ServiceStatus::AnsweredInPlace) => "a répondu sur place (non déplacé)",
        }
    }

    pub fn step_status(&self, s: StepStatus) -> &'static str {
        match (self.lang, s) {
            (Lang::En, StepStatus::Done) => "done",
            (Lang::En, StepStatus::Failed) => "failed",
            (Lang::En, StepStatus::TimedOut) => "timed out",
            (Lang::En, StepStatus::Blocked) => "blocked",
            (Lang::En, StepStatus::Cancelled) => "cancelled",
            (Lang::En, StepStatus::RolledBack) => "rolled back",
            (Lang::Fr, StepStatus::Done) => "fait",
            (Lang::Fr, StepStatus::Failed) => "en échec",
            (Lang::Fr, StepStatus::TimedOut) => "délai dépassé",
            (Lang::Fr, StepStatus::Blocked) => "bloqué",
            (Lang::Fr, StepStatus::Cancelled) => "interrompu",
            (Lang::Fr, StepStatus::RolledBack) => "annulé (retour arrière)",
        }
    }

    /// "18 of 22 services recovered".
    pub fn count_recovered(&self, n: usize, of: usize) -> String {
        match self.lang {
            Lang::En => format!("{n} of {of} services recovered"),
            Lang::Fr => format!("{n} services rétablis sur {of}"),
        }
    }

    pub fn count_rto(&self, n: usize, of: usize) -> String {
        match self.lang {
            Lang::En => format!("{n} of {of} services within their RTO target"),
            Lang::Fr => format!("{n} services sur {of} dans leur objectif de durée (RTO)"),
        }
    }

    pub fn count_rpo(&self, n: usize, of: usize, points_used: bool) -> String {
        match (self.lang, of) {
            (Lang::En, 0) if points_used => {
                "data loss (RPO): not measured (no service recovered from a verified replica point or a measured replication lag, or its loss could not be measured: the services table says why)"
                    .to_string()
            }
            (Lang::Fr, 0) if points_used => {
                "perte de données (RPO) : non mesurée (aucun service rétabli depuis un point de réplique vérifié ou un retard de réplication mesuré, ou sa perte n'a pas pu être mesurée : le tableau des services dit pourquoi)"
                    .to_string()
            }
            (Lang::En, 0) => "data loss (RPO): no replica point was used in this run".to_string(),
            (Lang::Fr, 0) => {
                "perte de données (RPO) : aucun point de réplique utilisé dans cette opération"
                    .to_string()
            }
            (Lang::En, _) => format!("{n} of {of} services within their RPO target"),
            (Lang::Fr, _) => {
                format!("{n} services sur {of} dans leur objectif de perte de données (RPO)")
            }
        }
    }

    pub fn failed_after(&self, status: StepStatus, attempts: u32) -> String {
        let what = self.step_status(status);
        match self.lang {
            Lang::En => format!("{what} after {attempts} attempt(s)"),
            Lang::Fr => format!("{what} après {attempts} tentative(s)"),
        }
    }

    pub fn retried(&self, attempts: u32) -> String {
        match self.lang {
            Lang::En => format!("succeeded on attempt {attempts}"),
            Lang::Fr => format!("réussi à la tentative {attempts}"),
        }
    }

    pub fn undo(&self, ok: bool) -> &'static str {
        match (self.lang, ok) {
            (Lang::En, true) => "rolled back (undo succeeded)",
            (Lang::En, false) => "undo FAILED",
            (Lang::Fr, true) => "retour arrière effectué",
            (Lang::Fr, false) => "retour arrière EN ÉCHEC",
        }
    }

    pub fn ran_again(&self) -> &'static str {
        match self.lang {
            Lang::En => "was running when the run stopped, taken up again by the resume",
            Lang::Fr => "en cours quand l'opération s'est arrêtée, reprise à la relance",
        }
    }

    pub fn count_problems(&self, n: usize) -> String {
        match (self.lang, n) {
            (Lang::En, 1) => "1 problem".to_string(),
            (Lang::En, n) => format!("{n} problems"),
            (Lang::Fr, 1) => "1 problème".to_string(),
            (Lang::Fr, n) => format!("{n} problèmes"),
        }
    }

    pub fn point_rolled_back(&self, item: &str, point: &str, dropped: &[String]) -> String {
        match self.lang {
            Lang::En => format!(
                "{item} rolled back to replica point {point}: the newer points {} and the data they held were given up",
                dropped.join(", ")
            ),
            Lang::Fr => format!(
                "{item} ramené au point de réplique {point} : les points plus récents {} et leurs données ont été abandonnés",
                dropped.join(", ")
            ),
        }
    }

    pub fn lag_measured(&self, lag: &str, host: &str, at: &str) -> String {
        match self.lang {
            Lang::En => format!(
                "replication lag {lag}, measured by the application's probe on {host} at {at}"
            ),
            Lang::Fr => format!(
                "retard de réplication {lag}, mesuré par la sonde de l'application sur {host} à {at}"
            ),
        }
    }

    pub fn lag_unknown(&self, why: &str) -> String {
        match self.lang {
            Lang::En => format!(
                "data loss not measured: the application's replication lag is unknown ({why})"
            ),
            Lang::Fr => format!(
                "perte de données non mesurée : le retard de réplication de l'application est inconnu ({why})"
            ),
        }
    }

    pub fn loss_still_running(&self, item: &str, point: &str) -> String {
        match self.lang {
            Lang::En => format!(
                "nothing in the journal shows {item} stopped before its point {point} was taken: what was written to it after that point may be lost"
            ),
            Lang::Fr => format!(
                "rien dans le journal ne montre {item} arrêté avant la prise de son point {point} : ce qui y a été écrit après ce point peut être perdu"
            ),
        }
    }

    pub fn loss_unasked(&self, item: &str, point: &str, to_start: f64) -> String {
        let d = self.dur(to_start);
        match self.lang {
            Lang::En => format!(
                "{item} was started from point {point} while the side it left could not be asked whether it still ran there, and no incident time was given: when it last wrote there is not known ({d} from its point to the run's start), so its data loss is not measured"
            ),
            Lang::Fr => format!(
                "{item} a été démarrée depuis le point {point} alors que le site quitté n'a pu dire si elle y tournait encore, et aucune heure d'incident n'a été donnée : sa dernière écriture y est inconnue ({d} de son point au début de l'exécution), sa perte de données n'est donc pas mesurée"
            ),
        }
    }

    pub fn loss_point_ahead(&self, item: &str, point: &str) -> String {
        match self.lang {
            Lang::En => format!(
                "{item}'s point {point} is dated after the run used it (the clock of the machine that replicated it runs ahead of this one): how old its data was cannot be told, so its data loss is not measured"
            ),
            Lang::Fr => format!(
                "le point {point} de {item} est daté d'après son emploi par l'exécution (l'horloge de la machine qui l'a répliqué avance sur celle-ci) : l'âge de ses données ne peut être dit, sa perte de données n'est donc pas mesurée"
            ),
        }
    }

    pub fn loss_two_clocks(&self, item: &str, point: &str) -> String {
        match self.lang {
            Lang::En => format!(
                "when {item} stopped writing cannot be compared with when its point {point} was taken: the run's times come from two clocks, or its clock went back (see the problems)"
            ),
            Lang::Fr => format!(
                "l'arrêt des écritures de {item} ne peut être comparé à la prise de son point {point} : les heures de l'exécution viennent de deux horloges, ou son horloge a reculé (voir les problèmes)"
            ),
        }
    }

    pub fn undo_failed(&self, step: &str, why: Option<&str>) -> String {
        let why = why.unwrap_or_default();
        match self.lang {
            Lang::En => format!(
                "{step}: the roll-back could not undo it ({why}): what it left is not known, neither recovered nor rolled back"
            ),
            Lang::Fr => format!(
                "{step} : le retour arrière n'a pas pu l'annuler ({why}) : ce qu'il a laissé n'est pas connu, ni reprise ni retour arrière"
            ),
        }
    }

    pub fn loss_diverged(&self, item: &str, point: &str) -> String {
        match self.lang {
            Lang::En => format!(
                "{item} was started from point {point} while the journal shows writes the point lacks (it still ran on the side left, or the run was forced past writes made there after it): what they were is not measured, and is lost"
            ),
            Lang::Fr => format!(
                "{item} a été démarrée depuis le point {point} alors que le journal montre des écritures absentes de ce point (elle tournait encore sur le site quitté, ou la reprise a été forcée malgré des écritures faites après) : ce qu'elles étaient n'est pas mesuré, et est perdu"
            ),
        }
    }

    pub fn loss_no_evidence(&self) -> String {
        match self.lang {
            Lang::En => "nothing the run journaled says what its data was recovered from (no replica point used, no replication lag read), though it has an RPO target: its data loss is not measured".to_string(),
            Lang::Fr => "rien de ce que l'exécution a journalisé ne dit d'où ses données ont été reprises (aucun point de réplique employé, aucun retard de réplication lu), alors qu'il a un objectif de RPO : sa perte de données n'est donc pas mesurée".to_string(),
        }
    }

    pub fn loss_no_point(&self, vm: &str) -> String {
        match self.lang {
            Lang::En => format!(
                "vm {vm} was started with no replica point journaled for it: what data it runs on, and so the service's data loss, is not measured"
            ),
            Lang::Fr => format!(
                "la vm {vm} a été démarrée sans point de réplique journalisé pour elle : on ne sait pas sur quelles données elle tourne, la perte de données du service n'est donc pas mesurée"
            ),
        }
    }

    pub fn loss_unknown(&self, why: &str) -> String {
        match self.lang {
            Lang::En => format!("data loss not measured: {why}"),
            Lang::Fr => format!("perte de données non mesurée : {why}"),
        }
    }

    pub fn loss_unverified(&self, item: &str, point: &str) -> String {
        match self.lang {
            Lang::En => format!(
                "{item} started from {point}, which no verified replica point proves: when its data was taken is not known"
            ),
            Lang::Fr => format!(
                "{item} démarré depuis {point}, qu'aucun point de réplique vérifié ne garantit : on ne sait pas de quand datent ses données"
            ),
        }
    }

    pub fn unverified_start(&self, item: &str, point: &str) -> String {
        match self.lang {
            Lang::En => format!(
                "{item} started from {point}, which no verified replica point proves: its data may not be what was replicated"
            ),
            Lang::Fr => format!(
                "{item} démarré depuis {point}, qu'aucun point de réplique vérifié ne garantit : ses données peuvent différer de ce qui a été répliqué"
            ),
        }
    }

    pub fn clock_went_back(&self, after: &str, back_s: i64) -> String {
        let by = d(back_s as f64);
        match self.lang {
            Lang::En => format!(
                "the orchestrator's clock went back {by} (this event follows one dated {after}): times on either side are not comparable, so no RTO is measured"
            ),
            Lang::Fr => format!(
                "l'horloge de l'orchestrateur a reculé de {by} (cet événement suit un autre daté {after}) : les heures de part et d'autre ne sont pas comparables, aucun RTO n'est donc mesuré"
            ),
        }
    }

    pub fn two_clocks(&self, before: &str, after: &str) -> String {
        match self.lang {
            Lang::En => format!(
                "resumed on {after}, after running on {before}: the times before and after come from two machines' clocks that nothing compared, so no RTO is measured"
            ),
            Lang::Fr => format!(
                "relancée sur {after}, après avoir tourné sur {before} : les heures d'avant et d'après viennent des horloges de deux machines que rien n'a comparées, aucun RTO n'est donc mesuré"
            ),
        }
    }

    pub fn interrupted(&self, reason: Option<&str>) -> String {
        match (self.lang, reason) {
            (Lang::En, None) => "run interrupted by the operator".to_string(),
            (Lang::En, Some(r)) => format!("run interrupted ({r})"),
            (Lang::Fr, None) => "opération interrompue par l'opérateur".to_string(),
            (Lang::Fr, Some(r)) => format!("opération interrompue ({r})"),
        }
    }

    pub fn ended_then_resumed(&self, status: crate::event::RunStatus) -> String {
        use crate::event::RunStatus as S;
        let (en, fr) = match status {
            S::Succeeded => ("succeeded", "réussie"),
            S::Failed => (
                "failed, rolled back where it could be",
                "en échec, annulée où elle a pu l'être",
            ),
            S::Partial => ("partly done", "partielle"),
            S::Interrupted => ("interrupted", "interrompue"),
        };
        match self.lang {
            Lang::En => format!(
                "the run ended here ({en}), then was resumed: what it did before and after is in the timeline"
            ),
            Lang::Fr => format!(
                "l'opération s'est terminée ici ({fr}), puis a été reprise : ce qu'elle a fait avant et après est dans la chronologie"
            ),
        }
    }

    pub fn readiness_forced(&self, operator: &str) -> String {
        match self.lang {
            Lang::En => {
                format!("started by {operator} with --force past problems that stop it otherwise")
            }
            Lang::Fr => format!(
                "lancée par {operator} avec --force malgré des problèmes qui l'arrêtent sinon"
            ),
        }
    }

    pub fn other_site(&self) -> String {
        match self.lang {
            Lang::En => "as the run started, the other site showed what follows".to_string(),
            Lang::Fr => "au lancement, l'autre site présentait ce qui suit".to_string(),
        }
    }

    pub fn journal_repaired(&self, line: usize, bytes: u64, kept_in: &str) -> String {
        match self.lang {
            Lang::En => format!(
                "journal line {line} was cut short by a crash: its {bytes} bytes were cut off before the run went on (kept in {kept_in})"
            ),
            Lang::Fr => format!(
                "ligne {line} du journal tronquée par un arrêt brutal : ses {bytes} octets ont été retirés avant la reprise (conservés dans {kept_in})"
            ),
        }
    }

    pub fn rec_rto_missed(
        &self,
        service: &str,
        achieved: f64,
        target: f64,
        chain: &[String],
        longest: Option<(&str, f64)>,
    ) -> String {
        let chain = chain.join(" → ");
        match self.lang {
            Lang::En => {
                let mut t = format!(
                    "{service} was recovered in {} against a target of {}: its critical path was {chain}.",
                    self.dur(achieved),
                    self.dur(target)
                );
                if let Some((step, secs)) = longest {
                    t.push_str(&format!(
                        " The longest step, {step}, took {}: shorten it, run it earlier, or revise the target.",
                        self.dur(secs)
                    ));
                }
                t
            }
            Lang::Fr => {
                let mut t = format!(
                    "{service} a été rétabli en {} pour un objectif de {} : son chemin critique était {chain}.",
                    self.dur(achieved),
                    self.dur(target)
                );
                if let Some((step, secs)) = longest {
                    t.push_str(&format!(
                        " L'étape la plus longue, {step}, a pris {} : la raccourcir, la lancer plus tôt, ou revoir l'objectif.",
                        self.dur(secs)
                    ));
                }
                t
            }
        }
    }

    pub fn rec_late_start(&self, delay: f64, services: &[String]) -> String {
        let list = services.join(", ");
        match self.lang {
            Lang::En => format!(
                "The run started {} after the declared incident, already past the RTO target of {list}: shorten the time from incident to decision (alerting, on-call, who may declare the disaster).",
                self.dur(delay)
            ),
            Lang::Fr => format!(
                "L'opération a commencé {} après l'incident déclaré, au-delà de l'objectif RTO de {list} : raccourcir le délai entre l'incident et la décision (alerte, astreinte, qui peut déclarer le sinistre).",
                self.dur(delay)
            ),
        }
    }

    pub fn rec_not_recovered(&self, service: &str, reason: Option<&str>) -> String {
        let reason = reason.unwrap_or("-");
        match self.lang {
            Lang::En => format!(
                "{service} was not recovered ({reason}): fix the cause and run a drill of it again (`reprise drill --service {service}`)."
            ),
            Lang::Fr => format!(
                "{service} n'a pas été rétabli ({reason}) : corriger la cause et refaire un exercice (`reprise drill --service {service}`)."
            ),
        }
    }

    pub fn rec_rpo_missed(&self, service: &str, loss: f64, target: f64) -> String {
        match self.lang {
            Lang::En => format!(
                "{service} lost {} of data against a target of {}: replicate it more often and watch `reprise status`.",
                self.dur(loss),
                self.dur(target)
            ),
            Lang::Fr => format!(
                "{service} a perdu {} de données pour un objectif de {} : le répliquer plus souvent et surveiller `reprise status`.",
                self.dur(loss),
                self.dur(target)
            ),
        }
    }

    pub fn rec_point_unverified(&self, items: &[String]) -> String {
        let list = items.join(", ");
        match self.lang {
            Lang::En => format!(
                "The replicas used for {list} had not been verified when they were used: verify the replicas on a schedule, so that a corrupt copy is found before the day it is needed."
            ),
            Lang::Fr => format!(
                "Les répliques utilisées pour {list} n'étaient pas vérifiées quand elles ont été utilisées : vérifier les répliques régulièrement, pour qu'une copie corrompue soit découverte avant le jour où elle sert."
            ),
        }
    }

    /// `82 checks passed, 1 warning, 0 failed`.
    pub fn checks_summary(&self, ok: usize, warnings: usize, failed: usize) -> String {
        match self.lang {
            Lang::En => format!("{ok} checks passed, {warnings} warnings, {failed} failed"),
            Lang::Fr => {
                format!("{ok} contrôles réussis, {warnings} avertissements, {failed} en échec")
            }
        }
    }

    /// A readiness status, in words.
    pub fn check_status(&self, status: crate::readiness::ItemStatus) -> &'static str {
        use crate::readiness::ItemStatus;
        match (self.lang, status) {
            (Lang::En, ItemStatus::Ok) => "ok",
            (Lang::En, ItemStatus::Warning) => "warning",
            (Lang::En, ItemStatus::Failed) => "failed",
            (Lang::Fr, ItemStatus::Ok) => "ok",
            (Lang::Fr, ItemStatus::Warning) => "avertissement",
            (Lang::Fr, ItemStatus::Failed) => "échec",
        }
    }

    pub fn rec_long_wait(&self, step: &str, waited: f64) -> String {
        match self.lang {
            Lang::En => format!(
                "The manual step {step} waited {} for a confirmation: make sure the person in charge is named and reachable, or automate it.",
                self.dur(waited)
            ),
            Lang::Fr => format!(
                "L'étape manuelle {step} a attendu {} une confirmation : s'assurer que la personne responsable est désignée et joignable, ou l'automatiser.",
                self.dur(waited)
            ),
        }
    }

    pub fn rec_retried(&self, step: &str, attempts: u32) -> String {
        match self.lang {
            Lang::En => format!(
                "{step} needed {attempts} attempts: find out why it does not succeed the first time."
            ),
            Lang::Fr => format!(
                "{step} a demandé {attempts} tentatives : comprendre pourquoi elle ne réussit pas du premier coup."
            ),
        }
    }

    pub fn rec_not_ready(&self, failed: &[String]) -> String {
        let list = failed.join(", ");
        match self.lang {
            Lang::En => format!("The readiness check before the run found problems: {list}."),
            Lang::Fr => {
                format!(
                    "Le contrôle de préparation avant l'opération a trouvé des problèmes : {list}."
                )
            }
        }
    }

    pub fn rec_stale_readiness(&self, age: &str) -> String {
        match self.lang {
            Lang::En => format!(
                "The last readiness check was {age} old when the run started: run `reprise check` just before a drill (and nightly from cron), so the report shows the state the run started from."
            ),
            Lang::Fr => format!(
                "Le dernier contrôle de préparation avait {age} au début de l'opération : lancer `reprise check` juste avant un exercice (et chaque nuit par cron), pour que le rapport montre l'état de départ."
            ),
        }
    }

    pub fn rec_tls_unverified(&self, steps: &[String]) -> String {
        let list = steps.join(", ");
        match self.lang {
            Lang::En => format!(
                "Health checks accepted a certificate without verifying it (`insecure = true`): {list}. Give them the certificate authority (`ca_file`) so that a check proves it reached the real server."
            ),
            Lang::Fr => format!(
                "Des contrôles de santé ont accepté un certificat sans le vérifier (`insecure = true`) : {list}. Leur donner l'autorité de certification (`ca_file`) pour qu'un contrôle prouve qu'il a joint le vrai serveur."
            ),
        }
    }

    pub fn rec_drill_overdue(&self, days: i64, every: i64) -> String {
        match self.lang {
            Lang::En => format!(
                "The previous successful drill was {days} days before this one: drill at least every {every} days."
            ),
            Lang::Fr => format!(
                "Le précédent exercice réussi date de {days} jours avant celui-ci : faire un exercice au moins tous les {every} jours."
            ),
        }
    }
}

static EN: Labels = Labels {
    lang: Lang::En,
    title: "Recovery report",
    colon: ": ",
    summary: "Summary",
    run: "Run",
    mode: "Operation",
    sites: "Sites",
    started: "Started",
    ended: "Ended",
    not_ended: "not ended",
    duration: "Duration",
    estimated: "Estimated beforehand",
    incident: "Incident declared at",
    operator: "Run by",
    machine: "From machine",
    result: "Result",
    measured_from_incident: "RTO and data loss are measured from the declared incident time.",
    measured_from_start: "RTO and data loss are measured from the start of the run.",
    resumed_by: "Resumed by",
    points_asked: "Points asked",
    services: "Services",
    checks_proved: "What proved each health check that passed",
    service: "Service",
    status: "Status",
    rto_target: "RTO target",
    rto_achieved: "RTO achieved",
    rpo_target: "RPO target",
    data_loss: "Data loss",
    point: "Replica point",
    steps: "Steps",
    met: "met",
    missed: "MISSED",
    not_measured: "n/a",
    lag_not_run: "its probe did not run",
    lag_no_failback_probe: "the inventory gives no probe of the reverse replication (`failback_lag`)",
    none: "none",
    unverified: "not verified",
    timeline: "Timeline",
    timeline_note: "Each bar is a step, on the row of its service; time runs from the start of the run.",
    critical_path: "Critical path (the chain of steps that decided the end)",
    legend_done: "done",
    legend_failed: "failed / timed out",
    legend_wait: "waiting for a person",
    legend_cleanup: "cleanup",
    legend_critical: "critical path",
    manual: "Manual steps and approvals",
    step: "Step",
    instructions: "Instructions",
    asked: "Asked at",
    confirmed_by: "Confirmed by",
    confirmed_at: "Confirmed at",
    waited: "Waited",
    note: "Note",
    not_confirmed: "not confirmed",
    problems: "Problems",
    no_problems: "No step failed, was retried, blocked or rolled back; every replica point used was verified and none was rolled back.",
    recommendations: "Recommendations",
    no_recommendations: "None: the run met its targets.",
    readiness: "Readiness check before the run",
    ready: "ready",
    not_ready: "NOT READY",
    evidence: "Evidence",
    run_id: "Run id",
    tool_version: "reprise version",
    sources_digest: "Inventory and runbooks (BLAKE3)",
    journal_digest: "Journal (BLAKE3)",
    events: "Journal events",
    people: "People involved",
    evidence_note: "This report is built only from the run's journal: `reprise report RUN` gives it again, identically.",
    blocked_default: "waits for a step that did not succeed",
    not_involved: "Nothing to do in this run for",
    rec_no_readiness: "No readiness check was recorded before this run: run `reprise check` before drills and keep its result with the report.",
    rec_no_drill: "No successful drill is recorded before this run: drill the recovery at least every 90 days.",
};

static FR: Labels = Labels {
    lang: Lang::Fr,
    title: "Rapport de reprise d'activité",
    colon: " : ",
    summary: "Synthèse",
    run: "Opération",
    mode: "Type",
    sites: "Sites",
    started: "Début",
    ended: "Fin",
    not_ended: "non terminée",
    duration: "Durée",
    estimated: "Durée estimée avant",
    incident: "Incident déclaré à",
    operator: "Lancée par",
    machine: "Depuis la machine",
    result: "Résultat",
    measured_from_incident: "Le RTO et la perte de données sont mesurés depuis l'heure déclarée de l'incident.",
    measured_from_start: "Le RTO et la perte de données sont mesurés depuis le début de l'opération.",
    resumed_by: "Reprise par",
    points_asked: "Points demandés",
    services: "Services",
    checks_proved: "Ce qui a prouvé chaque contrôle de santé réussi",
    service: "Service",
    status: "État",
    rto_target: "Objectif RTO",
    rto_achieved: "RTO obtenu",
    rpo_target: "Objectif RPO",
    data_loss: "Perte de données",
    point: "Point de réplique",
    steps: "Étapes",
    met: "tenu",
    missed: "NON TENU",
    not_measured: "n/d",
    lag_not_run: "sa sonde n'a pas été lancée",
    lag_no_failback_probe: "l'inventaire ne donne pas de sonde de la réplication inverse (`failback_lag`)",
    none: "aucun",
    unverified: "non vérifié",
    timeline: "Chronologie",
    timeline_note: "Chaque barre est une étape, sur la ligne de son service ; le temps part du début de l'opération.",
    critical_path: "Chemin critique (la suite d'étapes qui a fixé la fin)",
    legend_done: "fait",
    legend_failed: "en échec / délai dépassé",
    legend_wait: "attente d'une personne",
    legend_cleanup: "nettoyage",
    legend_critical: "chemin critique",
    manual: "Étapes manuelles et validations",
    step: "Étape",
    instructions: "Consignes",
    asked: "Demandée à",
    confirmed_by: "Confirmée par",
    confirmed_at: "Confirmée à",
    waited: "Attente",
    note: "Note",
    not_confirmed: "non confirmée",
    problems: "Problèmes",
    no_problems: "Aucune étape en échec, relancée, bloquée ou annulée ; chaque point de réplique utilisé était vérifié et aucun n'a été ramené en arrière.",
    recommendations: "Recommandations",
    no_recommendations: "Aucune : l'opération a tenu ses objectifs.",
    readiness: "Contrôle de préparation avant l'opération",
    ready: "prêt",
    not_ready: "PAS PRÊT",
    evidence: "Preuves",
    run_id: "Identifiant",
    tool_version: "Version de reprise",
    sources_digest: "Inventaire et procédures (BLAKE3)",
    journal_digest: "Journal (BLAKE3)",
    events: "Événements du journal",
    people: "Personnes impliquées",
    evidence_note: "Ce rapport est construit uniquement à partir du journal de l'opération : `reprise report RUN` le redonne à l'identique.",
    blocked_default: "attend une étape qui n'a pas réussi",
    not_involved: "Rien à faire dans cette opération pour",
    rec_no_readiness: "Aucun contrôle de préparation n'a été enregistré avant cette opération : lancer `reprise check` avant les exercices et joindre son résultat au rapport.",
    rec_no_drill: "Aucun exercice réussi n'est enregistré avant cette opération : faire un exercice de reprise au moins tous les 90 jours.",
};
