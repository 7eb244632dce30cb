// KEYWAY_API marks what the shared client library exports. The library is
// built with hidden visibility: everything else in it (the codec, asio, the
// implementation classes) stays private to it.
#pragma once

#if defined(__GNUC__)
#define KEYWAY_API __attribute__((visibility("default")))
#else
#define KEYWAY_API
#endif
