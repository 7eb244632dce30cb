# Keyway peer schema: what cluster nodes say to each other on a peer link
# (cluster/peer_link.hpp). Clients never see it.
#
# Framing: standard Cap'n Proto stream framing (unpacked), one PeerFrame per
# framed message, as on client connections (proto/keyway.capnp).
#
# A link is opened by the dialling node: it sends `hello`; the other node
# answers `welcome`, or `refused` and closes. Then either side may send
# `ping`, answered by `pong` with the same id; a link that brings nothing for
# three heartbeats is dead.
#
# Data flows one way on a link: from the dialling worker to the listening
# node (which answers only welcome, refused and pong). Each node dials every
# other node once per worker, so a worker sends everything it has for a peer
# (forwarded publishes, deliveries it ordered, its subscribers' interest,
# replies) on its own FIFO link. Frames are written back to back, as many per
# write as are queued.
#
# Since protocol 2, forwarded publishes and deliveries travel in batches
# (`forwards`, `delivers`): a worker gathers what one turn of its loop has
# for a node and sends it as one frame of each (more if large), before any
# other frame to that node, so a fence or barrier still follows the data it
# fences. Order holds within each list; the two lists carry unrelated
# streams (publishes for the node's owners; copies for its subscribers).
# Nodes of different protocol versions refuse each other's links.
#
# Since protocol 3, every forwarded publish and every delivery carries the
# ring epoch it was routed by (fencing, docs/cluster.md "Failures"): the
# receiving node takes it only from the key's owner under that epoch, waits
# while the epoch is newer than its own, and drops it (counted) once the
# epoch is stale: the key moved away from its sender and the hand-off that
# moved it is over.
#
# Evolution rules: as in proto/keyway.capnp (frozen ordinals, add at the end).

@0xf02c737562061e2d;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("keyway::cluster::wire");

const peerProtocolVersion :UInt32 = 3;

struct PeerFrame {
  union {
    hello   @0 :PeerHello;    # dialler -> listener, must be first
    welcome @1 :PeerWelcome;  # listener -> dialler, answers hello
    refused @2 :PeerRefused;  # listener -> dialler, then the listener closes
    ping    @3 :UInt64;       # either way
    pong    @4 :UInt64;       # either way, answers ping with its id
    forward @5 :Forward;      # protocol 1 only: one publish (now `forwards`)
    deliver @6 :Deliver;      # protocol 1 only: one delivery (now `delivers`)
    interest @7 :Interest;    # subscriptions added or removed on the dialler
    interestApplied @8 :InterestApplied;  # every worker applied an interest change
    reply   @9 :Reply;        # the owner's answer to a forwarded publish
    fence   @10 :Fence;       # a step of a ring change's hand-off
    barrier @11 :Barrier;     # a client's ping: were its forwarded publishes routed?
    forwards @12 :List(Forward);  # publishes, in order, to the node that owns their keys
    delivers @13 :List(Deliver);  # ordered messages, in order, to a node with interest
  }
}

# A ping's barrier across nodes: sent on the link that carried the
# connection's forwarded publishes, behind them; the receiving node answers
# (answer = true, on its own link back) once every worker routed everything
# that came before it.
struct Barrier {
  conn   @0 :UInt64;  # the pinging connection, on the node that asks
  round  @1 :UInt64;  # its barrier round
  answer @2 :Bool;
}

# The hand-off when the ring changes to epoch `epoch` (docs/cluster.md,
# "Membership changes"): every worker sends `ingress` on each link once it
# routes by the new ring; every worker sends `ordered` once it ordered every
# publish routed by the old ring; worker 0 sends `drained` once every worker
# of its node took in every delivery ordered by the old ring.
struct Fence {
  stage  @0 :FenceStage;
  epoch  @1 :Int64;
  worker @2 :UInt32;  # the sending worker
}

enum FenceStage {
  ingress @0;
  ordered @1;
  drained @2;
}

struct Header {
  name  @0 :Text;
  value @1 :Data;
}

struct Message {
  subject @0 :Text;
  key     @1 :Data;
  payload @2 :Data;
  replyTo @3 :Text;
  headers @4 :List(Header);
}

struct Forward {
  message @0 :Message;
  conn    @1 :UInt64;  # the publishing connection, on the dialler
  ackId   @2 :UInt64;  # 0: no ack wanted
  epoch   @3 :Int64;   # the ring epoch the dialler routed it by (protocol 3)
}

struct Target {
  conn @0 :UInt64;  # a subscriber's connection, on the receiving node
  sid  @1 :UInt32;
}

struct Deliver {
  message @0 :Message;
  seq     @1 :UInt64;  # rises strictly per ownerCore
  ownerCore @2 :UInt32;  # cluster-unique: the owner node's tag and core
  epoch   @3 :Int64;   # the ring epoch under which the sender owned the key
                       # (the one its publish was routed by)
  targets @4 :List(Target);
}

struct InterestChange {
  add       @0 :Bool;
  pattern   @1 :Text;    # add only
  group     @2 :Text;    # add only
  uid       @3 :UInt32;  # the subscription's id on the dialler's node
  conn      @4 :UInt64;
  sid       @5 :UInt32;
  requestId @6 :UInt64;  # non-zero: answer with interestApplied
}

struct Interest {
  changes      @0 :List(InterestChange);
  snapshotDone @1 :Bool;  # the dialling worker's full snapshot ends here
}

struct InterestApplied {
  conn      @0 :UInt64;
  requestId @1 :UInt64;
  sid       @2 :UInt32;
  uid       @3 :UInt32;
  refused   @4 :Text;  # non-empty: a limit on this node refused the subscription
}

struct Reply {
  conn      @0 :UInt64;
  ackId     @1 :UInt64;
  delivered @2 :UInt32;  # local deliveries made; 0 with replyTo set: noResponders
  subject   @3 :Text;
  replyTo   @4 :Text;
  refused   @5 :Text;    # non-empty: the owner did not order it, and says why (it may not
                         # order now: docs/cluster.md, "Failures"); the ack becomes ownerLost
}

struct PeerHello {
  cluster         @0 :Text;    # the cluster's name (cluster.name)
  nodeId          @1 :Text;    # the dialling node
  incarnation     @2 :Int64;   # its etcd lease: which life of the node this is
  epoch           @3 :Int64;   # the ring epoch it is at
  worker          @4 :UInt32;  # the dialling worker (one link per worker and peer)
  protocolVersion @5 :UInt32;  # peerProtocolVersion of the dialler
}

struct PeerWelcome {
  nodeId      @0 :Text;
  incarnation @1 :Int64;
  epoch       @2 :Int64;
  workers     @3 :UInt32;
}

struct PeerRefused {
  reason @0 :Text;  # for humans and logs: names what did not match
}
