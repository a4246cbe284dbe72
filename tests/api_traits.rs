//! The public handles can move between threads (and the stream can be spawned
//! on multi-threaded executors); errors are `std::error::Error + Send + Sync`.

fn send<T: Send>() {}
fn sync<T: Sync>() {}
fn error<T: std::error::Error + Send + Sync + 'static>() {}

#[test]
fn handles_are_send_and_errors_are_errors() {
    send::<dashi::Connection>();
    sync::<dashi::Connection>();
    send::<dashi::Channel>();
    send::<dashi::Producer>();
    sync::<dashi::Producer>();
    send::<dashi::Consumer>();
    send::<dashi::Delivery>();
    sync::<dashi::Delivery>();
    send::<dashi::DeliveryStream>();
    send::<dashi::SimpleQueue>();
    send::<dashi::Stats>();
    send::<dashi::Confirm>();
    sync::<dashi::Confirm>();
    sync::<dashi::Stats>();
    error::<dashi::Error>();
    error::<dashi::PublishError>();
    error::<dashi::AckError>();
    error::<dashi::UrlError>();
    error::<dashi::ConfirmsError>();
    error::<dashi::BatchError>();
}
