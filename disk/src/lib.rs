//! The on-disk formats shared by the image build (which writes them) and the
//! installer (which reads and re-renders them): the GPT ([`gpt`]) and the
//! image manifest ([`manifest`]).

pub mod gpt;
pub mod manifest;
