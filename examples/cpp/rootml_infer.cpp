// rootml_infer: score a batch with a model served by `rootml serve --grpc-port` (or Triton),
// over inference.GRPCInferenceService, the way CMSSW's SONIC client does: inputs as raw
// little-endian bytes in raw_input_contents, outputs read from raw_output_contents.
//
//   rootml_infer --address 127.0.0.1:8001 --model NAME [--version V]
//                --input NAME:DATATYPE:D0xD1x...:FILE ...   (raw little-endian values)
//                --output NAME:FILE ...                     (written as raw values)
//                [--ca CERT.pem]  (TLS, trusting this certificate)
//
// It checks that the server and the model are ready and that each input is one the model's
// metadata names, with its datatype, then sends one ModelInfer request and writes each output.
// Exit status 0 on success; 1 with the server's status code and message on an error.
#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "grpc_service.grpc.pb.h"

namespace {

struct Input {
  std::string name, datatype, file;
  std::vector<int64_t> shape;
};

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::stringstream stream(text);
  for (std::string part; std::getline(stream, part, sep);) parts.push_back(part);
  return parts;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

Input parse_input(const std::string& spec) {
  auto parts = split(spec, ':');
  if (parts.size() != 4) throw std::runtime_error("--input NAME:DATATYPE:SHAPE:FILE, not " + spec);
  Input input{parts[0], parts[1], parts[3], {}};
  for (const auto& dim : split(parts[2], 'x')) input.shape.push_back(std::stoll(dim));
  return input;
}

// Throws with the call's gRPC status code and message when it failed.
void check(const grpc::Status& status, const std::string& what) {
  if (!status.ok()) {
    throw std::runtime_error(what + ": gRPC status " + std::to_string(status.error_code()) +
                             ": " + status.error_message());
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string address = "127.0.0.1:8001", model, version, ca;
    std::vector<Input> inputs;
    std::map<std::string, std::string> outputs;  // name -> file
    for (int i = 1; i + 1 < argc; i += 2) {
      std::string flag = argv[i], value = argv[i + 1];
      if (flag == "--address") address = value;
      else if (flag == "--model") model = value;
      else if (flag == "--version") version = value;
      else if (flag == "--ca") ca = value;
      else if (flag == "--input") inputs.push_back(parse_input(value));
      else if (flag == "--output") {
        auto parts = split(value, ':');
        if (parts.size() != 2) throw std::runtime_error("--output NAME:FILE, not " + value);
        outputs[parts[0]] = parts[1];
      } else {
        throw std::runtime_error("unknown argument " + flag);
      }
    }
    if (model.empty() || inputs.empty() || outputs.empty()) {
      throw std::runtime_error("needs --model, at least one --input and one --output");
    }
    auto credentials = grpc::InsecureChannelCredentials();
    if (!ca.empty()) {
      grpc::SslCredentialsOptions options;
      options.pem_root_certs = read_file(ca);
      credentials = grpc::SslCredentials(options);
    }
    grpc::ChannelArguments arguments;
    arguments.SetMaxReceiveMessageSize(-1);
    auto stub = inference::GRPCInferenceService::NewStub(
        grpc::CreateCustomChannel(address, credentials, arguments));

    {
      grpc::ClientContext context;
      inference::ServerReadyRequest request;
      inference::ServerReadyResponse response;
      check(stub->ServerReady(&context, request, &response), "ServerReady");
      if (!response.ready()) throw std::runtime_error("server at " + address + " is not ready");
    }
    std::map<std::string, std::string> datatypes;  // the model's inputs
    {
      grpc::ClientContext context;
      inference::ModelMetadataRequest request;
      request.set_name(model);
      request.set_version(version);
      inference::ModelMetadataResponse response;
      check(stub->ModelMetadata(&context, request, &response), "ModelMetadata");
      for (const auto& tensor : response.inputs()) datatypes[tensor.name()] = tensor.datatype();
      std::cerr << "model " << response.name() << " (" << response.platform() << "), "
                << response.inputs_size() << " inputs, " << response.outputs_size()
                << " outputs\n";
    }

    inference::ModelInferRequest request;
    request.set_model_name(model);
    request.set_model_version(version);
    request.set_id("rootml_infer");
    for (const auto& input : inputs) {
      auto known = datatypes.find(input.name);
      if (known == datatypes.end()) throw std::runtime_error("model has no input " + input.name);
      if (known->second != input.datatype) {
        throw std::runtime_error("input " + input.name + " is " + known->second + ", not " +
                                 input.datatype);
      }
      auto* tensor = request.add_inputs();
      tensor->set_name(input.name);
      tensor->set_datatype(input.datatype);
      for (auto dim : input.shape) tensor->add_shape(dim);
      request.add_raw_input_contents(read_file(input.file));
    }
    for (const auto& output : outputs) request.add_outputs()->set_name(output.first);

    grpc::ClientContext context;
    inference::ModelInferResponse response;
    check(stub->ModelInfer(&context, request, &response), "ModelInfer");
    if (response.raw_output_contents_size() != response.outputs_size()) {
      throw std::runtime_error("answer without raw_output_contents for each output");
    }
    for (int i = 0; i < response.outputs_size(); ++i) {
      const auto& tensor = response.outputs(i);
      std::ofstream out(outputs.at(tensor.name()), std::ios::binary);
      const auto& raw = response.raw_output_contents(i);
      out.write(raw.data(), static_cast<std::streamsize>(raw.size()));
      std::cout << tensor.name() << " " << tensor.datatype() << " [";
      for (int d = 0; d < tensor.shape_size(); ++d) std::cout << (d ? "," : "") << tensor.shape(d);
      std::cout << "] " << raw.size() << " bytes\n";
    }
    return 0;
  } catch (const std::exception& err) {
    std::cerr << "rootml_infer: " << err.what() << "\n";
    return 1;
  }
}
