// cuttable_proxy: a TCP relay on 127.0.0.1 between its clients and one
// upstream port, that a test can cut (every relayed connection closed, new
// ones closed at once) and restore: a partition of one node from
// one service, without touching the machine's network. One thread of its own.
#pragma once

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/post.hpp>
#include <asio/write.hpp>

#include <array>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace keyway::test {

class cuttable_proxy {
 public:
  explicit cuttable_proxy(std::uint16_t upstream_port) : upstream_port_(upstream_port) {
    acceptor_ = std::make_unique<asio::ip::tcp::acceptor>(
        io_, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    port_ = acceptor_->local_endpoint().port();
    accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~cuttable_proxy() {
    run_here([this] {
      cut_now();
      std::error_code ignored;
      acceptor_->close(ignored);
    });
    work_.reset();
    io_.stop();
    thread_.join();
  }
  cuttable_proxy(const cuttable_proxy&) = delete;
  cuttable_proxy& operator=(const cuttable_proxy&) = delete;

  std::uint16_t port() const { return port_; }
  std::string http_url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::string tcp_url() const { return "tcp://127.0.0.1:" + std::to_string(port_); }

  /// Closes every relayed connection, and each new one as soon as it is
  /// accepted (the port stays bound, so nothing else can take it meanwhile).
  void cut() {
    run_here([this] { cut_now(); });
  }
  /// Relays new connections again.
  void restore() {
    run_here([this] { cut_ = false; });
  }

 private:
  struct pipe : std::enable_shared_from_this<pipe> {
    explicit pipe(asio::io_context& io) : a(io), b(io) {}
    asio::ip::tcp::socket a, b;  // client side, upstream side
    std::array<char, 16384> ab{}, ba{};
    void close() {
      std::error_code ignored;
      a.close(ignored);
      b.close(ignored);
    }
    void pump(asio::ip::tcp::socket& from, asio::ip::tcp::socket& to,
              std::array<char, 16384>& buf) {
      from.async_read_some(asio::buffer(buf), [self = shared_from_this(), &from, &to, &buf](
                                                  std::error_code ec, std::size_t n) {
        if (ec) return self->close();
        asio::async_write(to, asio::buffer(buf.data(), n),
                          [self, &from, &to, &buf](std::error_code ec2, std::size_t) {
                            if (ec2) return self->close();
                            self->pump(from, to, buf);
                          });
      });
    }
  };

  void accept() {
    acceptor_->async_accept([this](std::error_code ec, asio::ip::tcp::socket s) {
      if (ec) return;  // closed: the proxy is going away
      auto p = std::make_shared<pipe>(io_);
      p->a = std::move(s);
      std::error_code cec;
      if (!cut_) p->b.connect({asio::ip::make_address("127.0.0.1"), upstream_port_}, cec);
      if (cut_ || cec) {
        p->close();
      } else {
        pipes_.push_back(p);
        p->pump(p->a, p->b, p->ab);
        p->pump(p->b, p->a, p->ba);
      }
      accept();
    });
  }
  void cut_now() {
    cut_ = true;
    for (auto& w : pipes_)
      if (auto p = w.lock()) p->close();
    pipes_.clear();
  }
  template <class F>
  void run_here(F f) {
    std::promise<void> done;
    asio::post(io_, [&] {
      f();
      done.set_value();
    });
    done.get_future().wait();
  }

  const std::uint16_t upstream_port_;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_ = asio::make_work_guard(io_);
  std::unique_ptr<asio::ip::tcp::acceptor> acceptor_;
  std::vector<std::weak_ptr<pipe>> pipes_;
  std::uint16_t port_ = 0;
  bool cut_ = false;  // the io thread's
  std::thread thread_;
};

}  // namespace keyway::test
