// The frame codec of the wire protocol, in one include:
//   decoder.hpp   bytes -> validated wire::Frame readers (proto::decoder, proto::frame)
//   validate.hpp  semantic checks of a decoded frame (validate_client_frame, ...)
//   encoder.hpp   plain values -> framed bytes (proto::encoder and the *_fields structs)
//   out_buffer.hpp the outbound byte queue the encoder appends to
// Threading and costs are described in each header. The generated schema
// header is "proto/keyway.capnp.h" (namespace keyway::proto::wire).
#pragma once

#include "proto/decoder.hpp"
#include "proto/encoder.hpp"
#include "proto/errc.hpp"
#include "proto/limits.hpp"
#include "proto/out_buffer.hpp"
#include "proto/subject.hpp"
#include "proto/validate.hpp"
