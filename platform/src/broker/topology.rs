//! Declarations of the exchanges and queues, matching what Celery declares
//! (so a Python producer's own declarations never conflict with ours).

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::QueueNames;

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    /// RabbitMQ never changes the arguments of an existing queue: a
    /// redeclaration with others is refused (PRECONDITION_FAILED), and no
    /// retry can help, so the error says what to do.
    #[error(
        "queue {queue:?} exists with other arguments than {wanted} ({detail}); RabbitMQ cannot \
         change an existing queue's arguments: drain it and delete it (`rabbitmqctl delete_queue \
         {queue}`) so that it is declared again, or set CELERY_TASK_QUEUE_MAX_PRIORITY and \
         CELERY_QUEUE_TYPE to match it"
    )]
    QueueArguments {
        queue: String,
        wanted: String,
        detail: String,
    },
}

impl TopologyError {
    /// A configuration mistake that reconnecting cannot cure.
    pub fn is_permanent(&self) -> bool {
        matches!(self, TopologyError::QueueArguments { .. })
    }
}

#[derive(Debug, Clone)]
pub struct Topology {
    pub names: QueueNames,
}

impl Topology {
    pub fn new(names: QueueNames) -> Self {
        Topology { names }
    }

    /// Celery's layout: a durable direct exchange and a durable queue of the
    /// same name, bound with the same routing key, and no queue arguments
    /// (Celery declares the queue without any, and RabbitMQ refuses a
    /// redeclaration with different arguments).
    /// `x-queue-type` when quorum queues are configured, nothing otherwise
    /// (Celery declares its queues without arguments).
    fn queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.names.quorum {
            args.insert(
                ShortString::from("x-queue-type"),
                AMQPValue::LongString(LongString::from(b"quorum".to_vec())),
            );
        }
        args
    }

    /// The consumed queues' arguments: [`Self::queue_arguments`] and, with
    /// `CELERY_TASK_QUEUE_MAX_PRIORITY`, `x-max-priority` (as Celery's
    /// `task_queue_max_priority` declares them). The ladder's rungs and the
    /// dead-letter queue have none: a delayed message keeps its `priority`
    /// property and competes by it once it is back in its queue. What
    /// `inspect active_queues` reports as `queue_arguments`.
    pub fn task_queue_arguments(&self) -> FieldTable {
        let mut args = self.queue_arguments();
        if let Some(max) = self.names.max_priority {
            args.insert(
                ShortString::from("x-max-priority"),
                AMQPValue::LongInt(i32::from(max)),
            );
        }
        args
    }

    /// What the task queues are declared with, for the error message.
    fn wanted(&self) -> String {
        let kind = if self.names.quorum {
            "x-queue-type=quorum"
        } else {
            "a classic queue"
        };
        match self.names.max_priority {
            Some(max) => format!("{kind} with x-max-priority={max}"),
            None => format!("{kind} without x-max-priority"),
        }
    }

    /// Declares the task queue and the bulk queue (and any extra queue).
    pub async fn declare_task_queue(&self, channel: &Channel) -> Result<(), TopologyError> {
        for name in self.names.consumed() {
            self.declare_bound_queue(channel, &name, &name, ExchangeKind::Direct, &name)
                .await?;
        }
        Ok(())
    }

    /// A task queue as ours are declared (durable, with the task queues'
    /// arguments), bound to a durable `exchange` of `kind` with
    /// `routing_key`: our own queues' layout, and that of any queue
    /// consumed at run time (`celery control add_consumer`). A queue that
    /// exists with other arguments is [`TopologyError::QueueArguments`].
    pub async fn declare_bound_queue(
        &self,
        channel: &Channel,
        name: &str,
        exchange: &str,
        kind: ExchangeKind,
        routing_key: &str,
    ) -> Result<(), TopologyError> {
        channel
            .exchange_declare(exchange, kind, durable_exchange(), FieldTable::default())
            .await?;
        let declared = channel
            .queue_declare(name, durable_queue(), self.task_queue_arguments())
            .await;
        if let Err(e) = declared {
            return Err(match precondition_failed(&e) {
                Some(detail) => TopologyError::QueueArguments {
                    queue: name.to_string(),
                    wanted: self.wanted(),
                    detail,
                },
                None => e.into(),
            });
        }
        channel
            .queue_bind(
                name,
                exchange,
                routing_key,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }

    /// Messages that cannot be processed, published with a reason header.
    pub async fn declare_dead_letter_queue(
        &self,
        channel: &Channel,
    ) -> Result<String, lapin::Error> {
        let name = self.names.dead_letter();
        channel
            .queue_declare(&name, durable_queue(), self.queue_arguments())
            .await?;
        Ok(name)
    }

    /// Declares the whole delay ladder of `target` (see
    /// [`QueueNames::ladder`]): at start and on every reconnect, so a rung
    /// an operator deleted comes back.
    pub async fn declare_ladder(
        &self,
        channel: &Channel,
        target: &str,
    ) -> Result<(), lapin::Error> {
        for (rung, _) in self.names.ladder(target) {
            self.declare_rung(channel, target, rung).await?;
        }
        Ok(())
    }

    /// One rung: messages published to it (through the default exchange)
    /// expire after `rung` and are dead-lettered back into `target`. Delayed
    /// work thus stays durable in RabbitMQ instead of in worker memory. No
    /// `x-expires`: RabbitMQ counts a queue that is only published to as
    /// unused, and would delete it with the messages waiting in it.
    pub async fn declare_rung(
        &self,
        channel: &Channel,
        target: &str,
        rung: Duration,
    ) -> Result<String, lapin::Error> {
        let name = self.names.rung(target, rung);
        let mut args = self.queue_arguments();
        if self.names.quorum {
            // Quorum queues dead-letter at most once unless told otherwise;
            // a delayed message must not vanish on its way back.
            args.insert(
                ShortString::from("x-dead-letter-strategy"),
                AMQPValue::LongString(LongString::from(b"at-least-once".to_vec())),
            );
            args.insert(
                ShortString::from("x-overflow"),
                AMQPValue::LongString(LongString::from(b"reject-publish".to_vec())),
            );
        }
        args.insert(
            ShortString::from("x-message-ttl"),
            AMQPValue::LongLongInt(rung.as_millis().max(1000) as i64),
        );
        args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from(target.as_bytes().to_vec())),
        );
        args.insert(
            ShortString::from("x-dead-letter-routing-key"),
            AMQPValue::LongString(LongString::from(target.as_bytes().to_vec())),
        );
        channel.queue_declare(&name, durable_queue(), args).await?;
        Ok(name)
    }
}

/// RabbitMQ's text when it refused a declaration as PRECONDITION_FAILED.
fn precondition_failed(e: &lapin::Error) -> Option<String> {
    match e {
        lapin::Error::ProtocolError(amqp)
            if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) =>
        {
            Some(amqp.get_message().to_string())
        }
        _ => None,
    }
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}
