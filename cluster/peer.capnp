# Keyway peer schema: what cluster nodes say to each other on a peer link
# (cluster/peer_link.hpp). Clients never see it.
#
# Framing: standard Cap'n Proto stream framing (unpacked), one PeerFrame per
# framed message, as on client connections (proto/keyway.capnp).
#
# A link is opened by the dialling node: it sends `hello`; the other node
# answers `welcome`, or `refused` and closes. Then either side may send
# `ping`, answered by `pong` with the same id; a link that brings nothing for
# three heartbeats is dead. The frames that carry messages (forwarded
# publishes, deliveries, interest) are not defined yet.
#
# Evolution rules: as in proto/keyway.capnp (frozen ordinals, add at the end).

@0xf02c737562061e2d;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("keyway::cluster::wire");

const peerProtocolVersion :UInt32 = 1;

struct PeerFrame {
  union {
    hello   @0 :PeerHello;    # dialler -> listener, must be first
    welcome @1 :PeerWelcome;  # listener -> dialler, answers hello
    refused @2 :PeerRefused;  # listener -> dialler, then the listener closes
    ping    @3 :UInt64;       # either way
    pong    @4 :UInt64;       # either way, answers ping with its id
  }
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
