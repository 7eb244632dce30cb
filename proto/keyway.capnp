# Keyway wire schema, protocol version 2 (version 1 is version 2 without
# publishBatch and messageBatch).
#
# Framing: standard Cap'n Proto stream framing (unpacked): a segment table
# (u32 segment count - 1, u32 size in words per segment, padded to 8 bytes),
# then the segments. Each framed message holds exactly one `Frame`.
# docs/protocol.md explains every frame and field; this file is the truth for
# names, ordinals and types.
#
# Evolution rules (the file id and every ordinal below are frozen):
# - Never renumber, reuse or retype an ordinal. Renaming is wire-compatible
#   but breaks source code; avoid it.
# - Add fields only at the end of a struct, with the next free ordinal.
# - Add new frame kinds only at the end of the `Frame` union. A server answers
#   an unknown kind with a fatal `protocol` error; a client ignores it.
# - Add enum values only at the end. An unknown ErrorCode reads as `internal`.
# - Never remove a field: rename it `obsoleteFoo` and stop setting it.
# - A change a peer cannot ignore safely bumps `protocolVersion`.

@0xa87fc02a1ca34045;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("keyway::proto::wire");

const protocolVersion :UInt32 = 2;
# The version this schema describes; hello and welcome carry it.
# 2: adds publishBatch and messageBatch.
# Added within version 2, since a peer may ignore them (evolution rules):
# Welcome.connectUrls and the `draining` frame.

struct Frame {
  union {
    hello       @0 :Hello;        # client -> server, must be first
    welcome     @1 :Welcome;      # server -> client, answers hello
    publish     @2 :Publish;      # client -> server
    subscribe   @3 :Subscribe;    # client -> server
    unsubscribe @4 :Unsubscribe;  # client -> server
    message     @5 :Message;      # server -> client, one delivery
    ack         @6 :Ack;          # server -> client
    error       @7 :Error;        # server -> client
    ping        @8 :Ping;         # either way
    pong        @9 :Pong;         # either way, answers ping
    publishBatch @10 :PublishBatch; # client -> server, protocol version 2
    messageBatch @11 :MessageBatch; # server -> client, protocol version 2
    draining    @12 :Draining;    # server -> client: shutting down, reconnect elsewhere
  }
}

struct Header {
  name  @0 :Text;   # non-empty
  value @1 :Data;
}

struct Hello {
  protocolVersion @0 :UInt32;   # the highest version the client speaks
  clientName      @1 :Text;     # free text for logs and /status, may be empty
  authToken       @2 :Text;     # empty = no token
}

struct Limits {
  # The server's limits, so a client can refuse oversized input locally.
  # 0 means "not announced".
  maxPayload       @0 :UInt32;  # bytes of Publish.payload
  maxFrame         @1 :UInt32;  # bytes of one framed message, segment table included
  maxSubject       @2 :UInt32;  # bytes of a subject, pattern, replyTo or queue group
  maxKey           @3 :UInt32;  # bytes of Publish.key
  maxHeaders       @4 :UInt32;  # entries in Publish.headers
  maxHeaderBytes   @5 :UInt32;  # sum of name and value bytes of all headers
  maxSubscriptions @6 :UInt32;  # live subscriptions per connection
  maxSegments      @7 :UInt32;  # segments per framed message
  maxPendingBytes  @8 :UInt64;  # outbound bytes queued per connection before slow-consumer policy
}

struct Welcome {
  serverId        @0 :Text;     # unique per daemon process
  serverVersion   @1 :Text;     # e.g. "0.1.0"
  protocolVersion @2 :UInt32;   # the version both sides speak from now on
  workerCount     @3 :UInt32;   # number of owner cores (range of Message.ownerCore on one node)
  limits          @4 :Limits;
  connectUrls     @5 :List(Text);
  # Other client URLs of this deployment to reconnect to ("tcp://HOST:PORT",
  # "unix:///path"); empty = none announced (server.advertise).
}

struct Publish {
  subject @0 :Text;             # literal subject, no wildcards
  key     @1 :Data;             # empty = route by subject
  payload @2 :Data;
  headers @3 :List(Header);
  replyTo @4 :Text;             # empty = none; else a literal subject (request/reply)
  ackId   @5 :UInt64;           # 0 = no ack wanted; else answered by Ack or Error
}

struct PublishBatch {
  # Many publishes to one subject in one frame, each routed by its own key
  # as if it were a Publish of its own, in the order of the entries. No
  # headers, replyTo or ackId: send a Publish for those.
  subject @0 :Text;             # literal subject, no wildcards, for every entry
  count   @1 :UInt32;           # entries in `entries`
  entries @2 :Data;
  # The entries back to back, no padding. Each: u32 key size, u32 payload
  # size (little-endian), then the key's bytes, then the payload's. Empty
  # key = route by subject.
}

struct Subscribe {
  sid        @0 :UInt32;        # chosen by the client, non-zero, unique per connection
  pattern    @1 :Text;          # subject pattern, may use `*` and a final `>`
  queueGroup @2 :Text;          # empty = none
  requestId  @3 :UInt64;        # 0 = no ack wanted; else answered by Ack or Error
}

struct Unsubscribe {
  sid       @0 :UInt32;
  requestId @1 :UInt64;         # 0 = no ack wanted
}

struct Message {
  sid       @0 :UInt32;         # the subscription that matched
  subject   @1 :Text;           # the subject it was published to
  key       @2 :Data;
  payload   @3 :Data;
  headers   @4 :List(Header);
  replyTo   @5 :Text;           # empty = none
  ownerCore @6 :UInt32;         # the core that ordered this key (in a cluster: node tag * 256 + core)
  seq       @7 :UInt64;         # rises strictly per ownerCore
}

struct MessageBatch {
  # Deliveries to one subscription of messages published to one subject,
  # in delivery order, each as if it were a Message of its own (no headers,
  # no replyTo: those come as Message frames).
  sid     @0 :UInt32;           # the subscription that matched
  subject @1 :Text;             # the subject they were published to
  count   @2 :UInt32;           # entries in `entries`
  entries @3 :Data;
  # The entries back to back, no padding. Each: u32 key size, u32 payload
  # size, u32 ownerCore, u64 seq (little-endian), then the key's bytes, then
  # the payload's.
}

struct Ack {
  requestId @0 :UInt64;         # the ackId or requestId being answered
  delivered @1 :UInt32;         # publish: subscribers reached; subscribe/unsubscribe: 0
}

enum ErrorCode {
  protocol             @0;      # malformed frame or frame not allowed now
  frameTooLarge        @1;
  payloadTooLarge      @2;      # payload, header count or header bytes over the limit
  invalidSubject       @3;      # subject, pattern, replyTo or queue group
  authFailed           @4;
  tooManySubscriptions @5;
  slowConsumer         @6;
  noResponders         @7;
  shuttingDown         @8;
  unsupportedVersion   @9;
  timeout              @10;
  internal             @11;
  invalidKey           @12;     # key longer than maxKey
  tooManyConnections   @13;     # over limits.max_connections (fatal); an older client reads it as internal
  ownerLost            @14;     # cluster: the key's owner node was lost before it acknowledged this
                                # publish (requestId = its ackId); it may or may not have been
                                # delivered. Retriable; an older client reads it as internal
}

struct Error {
  code      @0 :ErrorCode;
  message   @1 :Text;           # for humans: names the field, the value and the limit
  requestId @2 :UInt64;         # the ackId/requestId answered; 0 = not about one request
  fatal     @3 :Bool;           # true: the server closes the connection after this frame
  replyTo   @4 :Text;           # noResponders: the replyTo of the request; else empty
}

struct Draining {
  # The server is shutting down (lame duck). It keeps reading and routing
  # this connection's frames for `graceMs` more milliseconds, then stops
  # reading, writes what is queued and closes. Move to another server
  # (Welcome.connectUrls); a ping answered before then proves that every
  # earlier publish was routed. Sent at most once, after the welcome.
  reason  @0 :Text;             # for humans and logs
  graceMs @1 :UInt32;           # how long the server keeps reading; 0 = it stops now
}

struct Ping {
  id @0 :UInt64;
}

struct Pong {
  id @0 :UInt64;                # the id of the ping answered
}
