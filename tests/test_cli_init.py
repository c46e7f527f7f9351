"""`awnode init`, `awnode testnet init` and `awnode keygen`: files, keys, genesis, ports and peers."""

from __future__ import annotations

import json
import socket

import pytest
from rich.console import Console
from typer.testing import CliRunner

from agent_world_client.client import AgentKey
from agent_world_node.config import ConfigError, Home, SynchronyParams, read_config, read_genesis, read_key
from agent_world_node.network import peer_id_for_seed
from agent_world_runtime.params import GenesisAgent
from agent_world_tools import cli
from agent_world_tools.testnet import (
    TestnetOptions,
    faucet_key_file,
    init_testnet,
    load_testnet,
    pick_free_ports,
    prepare_testnet,
)

FAUCET_BALANCE = 10**15

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(cli.app, list(args))


def assert_faucet(path, genesis) -> AgentKey:
    """``path`` is a private key file of agent ``faucet``, and ``genesis`` holds that agent with
    ``FAUCET_BALANCE`` of each resource, and otherwise only the operators of its validators."""
    assert path.exists(), path
    assert (path.stat().st_mode & 0o777) == 0o600
    faucet = AgentKey.load(path)
    assert faucet.agent_id == "faucet"
    assert genesis.agents[0] == GenesisAgent(agent_id="faucet", public_key=faucet.key.public_key.hex(),
                                             electricity=FAUCET_BALANCE, data=FAUCET_BALANCE)
    assert [a.agent_id for a in genesis.agents[1:]] == [v.operator for v in genesis.validators if v.operator]
    record = genesis.new_world().get_agent("faucet")  # the world at height 0 has it, funded
    assert record is not None and record.public_key == faucet.key.public_key
    assert (record.electricity, record.data, record.last_nonce) == (FAUCET_BALANCE, FAUCET_BALANCE, 0)
    return faucet


def test_init_creates_a_single_validator_home(tmp_path):
    home_dir = tmp_path / "n"
    result = invoke("init", "--home", str(home_dir), "--moniker", "alpha", "--chain-id", "my-chain")
    assert result.exit_code == 0, result.output
    home = Home(home_dir)
    for f in (home.config_file, home.genesis_file, home.node_key_file, home.validator_key_file):
        assert f.exists(), f
    assert (home.validator_key_file.stat().st_mode & 0o777) == 0o600
    genesis = read_genesis(home.genesis_file)
    validator = read_key(home.validator_key_file)
    assert genesis.chain_id == "my-chain"
    assert [(v.name, v.public_key, v.stake) for v in genesis.validators] == [("alpha", validator.public_key.hex(), 100)]
    assert read_config(home.config_file).moniker == "alpha"
    node_key = read_key(home.node_key_file)
    assert node_key.seed != validator.seed
    assert peer_id_for_seed(node_key.seed) in result.output
    # the one genesis agent, the faucet, whose key the home holds, and the output says where
    faucet = assert_faucet(home.config_dir / "faucet.json", genesis)
    assert faucet.key.seed not in (validator.seed, node_key.seed)
    assert "faucet.json" in result.output
    # the synchrony parameters of block time (PBTS) are written out, with their defaults
    written = json.loads(home.genesis_file.read_text())
    assert written["synchrony"] == {"precision_ms": 500, "message_delay_ms": 15_000}
    assert genesis.synchrony == SynchronyParams(precision_ms=500, message_delay_ms=15_000)


def test_init_refuses_an_existing_home_without_traceback(tmp_path):
    home_dir = tmp_path / "n"
    assert invoke("init", "--home", str(home_dir)).exit_code == 0
    before = Home(home_dir).validator_key_file.read_bytes()
    faucet_before = (Home(home_dir).config_dir / "faucet.json").read_bytes()
    result = invoke("init", "--home", str(home_dir))
    assert result.exit_code == 1
    assert "already exists" in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert Home(home_dir).validator_key_file.read_bytes() == before
    assert (Home(home_dir).config_dir / "faucet.json").read_bytes() == faucet_before


def test_two_inits_make_different_random_keys(tmp_path):
    assert invoke("init", "--home", str(tmp_path / "a")).exit_code == 0
    assert invoke("init", "--home", str(tmp_path / "b")).exit_code == 0
    a, b = Home(tmp_path / "a"), Home(tmp_path / "b")
    assert read_key(a.validator_key_file).seed != read_key(b.validator_key_file).seed
    assert read_key(a.node_key_file).seed != read_key(b.node_key_file).seed
    assert read_key(a.config_dir / "faucet.json").seed != read_key(b.config_dir / "faucet.json").seed


def _port(listen_multiaddr: str) -> int:
    parts = listen_multiaddr.split("/")
    return int(parts[parts.index("tcp") + 1])


def test_testnet_init_shares_one_genesis_and_full_mesh_peers(tmp_path):
    result = invoke("testnet", "init", "--nodes", "4", "--dir", str(tmp_path), "--chain-id", "tn-1")
    assert result.exit_code == 0, result.output
    homes = [Home(tmp_path / f"node{i}") for i in range(4)]
    assert not (tmp_path / "node4").exists()
    genesis_bytes = {h.genesis_file.read_bytes() for h in homes}
    assert len(genesis_bytes) == 1
    genesis = read_genesis(homes[0].genesis_file)
    assert genesis.chain_id == "tn-1"
    validator_keys = [read_key(h.validator_key_file) for h in homes]
    assert [v.public_key for v in genesis.validators] == [k.public_key.hex() for k in validator_keys]
    assert [v.stake for v in genesis.validators] == [100] * 4
    assert genesis.synchrony == SynchronyParams()  # in the shared genesis, so every node agrees
    assert len({k.seed for k in validator_keys}) == 4
    # one faucet for the whole testnet, next to the node homes, in the shared genesis
    assert faucet_key_file(tmp_path) == tmp_path / "faucet.json"
    faucet = assert_faucet(tmp_path / "faucet.json", genesis)
    assert faucet.key.seed not in {k.seed for k in validator_keys}
    assert not any((h.config_dir / "faucet.json").exists() for h in homes)
    # each validator's bond is held by its operator, a genesis agent whose key is beside the homes
    world = genesis.new_world()
    for i, v in enumerate(genesis.validators):
        operator = AgentKey.load(tmp_path / f"operator{i}.json")
        assert v.operator == operator.agent_id == f"operator{i}"
        assert world.get_agent(operator.agent_id).public_key == operator.key.public_key
        assert world.validator_record(v.public_key).bonds == {operator.agent_id: 100}
    assert genesis.epoch_length == 100 and genesis.governance.voting_period_heights == 60

    configs = [read_config(h.config_file) for h in homes]
    peer_ids = [peer_id_for_seed(read_key(h.node_key_file).seed) for h in homes]
    assert len(set(peer_ids)) == 4
    p2p_ports = [_port(c.p2p.listen) for c in configs]
    rpc_ports = [int(c.rpc.listen.rsplit(":", 1)[1]) for c in configs]
    assert len(set(p2p_ports + rpc_ports)) == 8
    for i, c in enumerate(configs):
        assert c.moniker == f"node{i}"
        assert c.p2p.listen == f"/ip4/127.0.0.1/tcp/{p2p_ports[i]}"
        assert c.rpc.listen.startswith("127.0.0.1:")
        expected = {f"/ip4/127.0.0.1/tcp/{p2p_ports[j]}/p2p/{peer_ids[j]}" for j in range(4) if j != i}
        assert set(c.p2p.peers) == expected and len(c.p2p.peers) == 3

    nodes = load_testnet(tmp_path)
    assert [n.name for n in nodes] == ["node0", "node1", "node2", "node3"]
    assert [n.rpc_url for n in nodes] == [f"http://127.0.0.1:{p}" for p in rpc_ports]
    assert {n.chain_id for n in nodes} == {"tn-1"}


def test_testnet_init_uses_random_keys_each_time(tmp_path):
    init_testnet(tmp_path / "a", 2)
    init_testnet(tmp_path / "b", 2)
    ka = read_key(Home(tmp_path / "a" / "node0").validator_key_file)
    kb = read_key(Home(tmp_path / "b" / "node0").validator_key_file)
    assert ka.seed != kb.seed
    assert read_key(tmp_path / "a" / "faucet.json").seed != read_key(tmp_path / "b" / "faucet.json").seed


def test_testnet_init_rejects_bad_counts_and_existing_homes(tmp_path):
    result = invoke("testnet", "init", "--nodes", "0", "--dir", str(tmp_path / "z"))
    assert result.exit_code == 1 and "at least 1" in result.stderr
    assert invoke("testnet", "init", "--nodes", "2", "--dir", str(tmp_path / "t")).exit_code == 0
    again = invoke("testnet", "init", "--nodes", "2", "--dir", str(tmp_path / "t"))
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_load_testnet_detects_a_foreign_genesis(tmp_path):
    init_testnet(tmp_path, 2)
    g1 = Home(tmp_path / "node1").genesis_file
    g1.write_text(g1.read_text().replace('"stake": 100', '"stake": 101', 1))
    with pytest.raises(ConfigError, match="differs from node0"):
        load_testnet(tmp_path)


def test_pick_free_ports_are_distinct_and_bindable():
    ports = pick_free_ports(6)
    assert len(set(ports)) == 6
    for p in ports:
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
        finally:
            s.close()


def test_prepare_testnet_creates_then_reuses_and_checks_node_count(tmp_path):
    console = Console(record=True, width=200)
    d, nodes = prepare_testnet(TestnetOptions(nodes=3, directory=tmp_path / "tn"), console)
    assert len(nodes) == 3
    before = Home(d / "node0").validator_key_file.read_bytes()
    d2, nodes2 = prepare_testnet(TestnetOptions(directory=tmp_path / "tn"), console)
    assert d2 == d and [n.rpc_url for n in nodes2] == [n.rpc_url for n in nodes]
    assert Home(d / "node0").validator_key_file.read_bytes() == before
    assert "reusing the 3-node testnet" in console.export_text()
    with pytest.raises(ConfigError, match="holds a testnet of 3 nodes, not 5"):
        prepare_testnet(TestnetOptions(nodes=5, directory=tmp_path / "tn"), console)


def test_prepare_testnet_without_dir_makes_and_prints_a_temp_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    console = Console(record=True, width=300)
    d, nodes = prepare_testnet(TestnetOptions(nodes=1), console)
    assert d.parent == tmp_path and len(nodes) == 1
    assert f"testnet directory: {d}" in console.export_text()


def test_keygen_writes_a_private_key_file_and_never_overwrites(tmp_path):
    out = tmp_path / "k.json"
    result = invoke("keygen", "--out", str(out), "--agent-id", "alice")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["agent_id"] == "alice" and len(bytes.fromhex(data["seed"])) == 32
    assert data["public_key"] in result.output
    assert (out.stat().st_mode & 0o777) == 0o600
    again = invoke("keygen", "--out", str(out))
    assert again.exit_code == 1 and "already exists" in again.stderr
    assert json.loads(out.read_text()) == data
    # how to bring the agent into existence: an existing agent (the faucet) creates it
    said = " ".join(result.output.split())
    assert '"type": "create_agent"' in said and '"agent_id": "alice"' in said, said
    assert data["public_key"] in said and "faucet" in said
    bad = invoke("keygen", "--out", str(tmp_path / "b.json"), "--agent-id", "Bad Id")
    assert bad.exit_code == 1 and "invalid agent id" in bad.stderr


def test_start_reports_a_missing_home_clearly(tmp_path):
    result = invoke("start", "--home", str(tmp_path / "nothing"))
    assert result.exit_code == 1
    assert "no node home here" in result.stderr and "awnode init" in result.stderr


def test_start_rejects_malformed_peers(tmp_path):
    result = invoke("start", "--home", str(tmp_path), "--peers", "127.0.0.1:4001")
    assert result.exit_code == 1 and "not a multiaddr" in result.stderr
    assert cli.parse_peers("/ip4/1.2.3.4/tcp/1/p2p/QmA, /ip4/1.2.3.5/tcp/2/p2p/QmB") == [
        "/ip4/1.2.3.4/tcp/1/p2p/QmA",
        "/ip4/1.2.3.5/tcp/2/p2p/QmB",
    ]
    assert cli.parse_peers(None) is None


def test_init_with_genesis_joins_an_existing_chain_as_a_full_node(tmp_path):
    chain = tmp_path / "chain"
    assert invoke("init", "--home", str(chain), "--chain-id", "shared").exit_code == 0
    peer = f"/ip4/127.0.0.1/tcp/26656/p2p/{peer_id_for_seed(read_key(Home(chain).node_key_file).seed)}"
    joiner = tmp_path / "joiner"
    result = invoke("init", "--home", str(joiner), "--genesis", str(Home(chain).genesis_file), "--peers", peer)
    assert result.exit_code == 0, result.output
    home = Home(joiner)
    assert home.genesis_file.read_bytes() == Home(chain).genesis_file.read_bytes()
    assert read_config(home.config_file).p2p.peers == [peer]
    validators = {v.public_key for v in read_genesis(home.genesis_file).validators}
    assert read_key(home.validator_key_file).public_key.hex() not in validators  # never votes
    assert "full node" in result.output
    # the chain's faucet is in the copied genesis; the joiner gets no faucet key of its own
    assert_faucet(Home(chain).config_dir / "faucet.json", read_genesis(home.genesis_file))
    assert not (home.config_dir / "faucet.json").exists() and "faucet" not in result.output


def test_init_with_genesis_needs_peers_and_a_readable_file(tmp_path):
    chain = tmp_path / "chain"
    assert invoke("init", "--home", str(chain)).exit_code == 0
    result = invoke("init", "--home", str(tmp_path / "j1"), "--genesis", str(Home(chain).genesis_file))
    assert result.exit_code != 0 and "--peers" in result.output
    result = invoke("init", "--home", str(tmp_path / "j2"), "--genesis", str(tmp_path / "missing.json"),
                    "--peers", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWAbc")
    assert result.exit_code != 0 and "missing.json" in result.output
    assert not Home(tmp_path / "j2").config_file.exists()


def _genesis_file(tmp_path, **extra):
    """A minimal genesis.json (one validator) plus ``extra`` top-level fields."""
    path = tmp_path / "genesis.json"
    data = {"chain_id": "c", "genesis_time_ms": 0,
            "validators": [{"name": "v", "public_key": "11" * 32, "stake": 1}], **extra}
    path.write_text(json.dumps(data))
    return path


def test_genesis_without_synchrony_parameters_gets_the_defaults(tmp_path):
    genesis = read_genesis(_genesis_file(tmp_path))
    assert (genesis.synchrony.precision_ms, genesis.synchrony.message_delay_ms) == (500, 15_000)
    genesis = read_genesis(_genesis_file(tmp_path, synchrony={"precision_ms": 50}))
    assert (genesis.synchrony.precision_ms, genesis.synchrony.message_delay_ms) == (50, 15_000)


@pytest.mark.parametrize(("synchrony", "error"), [
    ({"precision_ms": 0}, "synchrony.precision_ms must be an integer number of milliseconds in 1..86400000, got 0"),
    ({"message_delay_ms": -5}, "synchrony.message_delay_ms must be .* got -5"),
    ({"message_delay_ms": 86_400_001}, "synchrony.message_delay_ms must be .* got 86400001"),
    ({"precision_ms": "500"}, r"Expected `int`, got `str` - at `\$.synchrony.precision_ms`"),
    ({"precision_ms": True}, r"Expected `int`, got `bool`"),
    ({"precision": 500}, "unknown field `precision`"),
])
def test_genesis_with_bad_synchrony_parameters_is_refused_naming_the_field(tmp_path, synchrony, error):
    path = _genesis_file(tmp_path, synchrony=synchrony)
    with pytest.raises(ConfigError, match=f"{path}: invalid genesis .*{error}"):
        read_genesis(path)
    with pytest.raises(ValueError, match="precision_ms=500, message_delay_ms=15000"):
        SynchronyParams(precision_ms=0)


def test_testnet_add_node_adds_a_full_node_that_dials_every_validator(tmp_path):
    assert invoke("testnet", "init", "--nodes", "2", "--dir", str(tmp_path)).exit_code == 0
    result = invoke("testnet", "add-node", "--dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "awnode start --home" in result.output and "create-validator" in result.output
    home = Home(tmp_path / "node2")
    genesis = read_genesis(home.genesis_file)
    assert home.genesis_file.read_bytes() == Home(tmp_path / "node0").genesis_file.read_bytes()
    assert read_key(home.validator_key_file).public_key.hex() not in {v.public_key for v in genesis.validators}
    assert len(read_config(home.config_file).p2p.peers) == 2
    missing = invoke("testnet", "add-node", "--dir", str(tmp_path / "none"))
    assert missing.exit_code == 1 and "no testnet here" in missing.output and "Traceback" not in missing.output


def test_testnet_init_with_a_base_port_and_a_port_in_use(tmp_path):
    import socket

    from agent_world_tools.testnet.homes import pick_free_ports

    base = pick_free_ports(1)[0] // 10 * 10
    if base + 11 > 65535 or base < 1024:
        base = 30_000
    result = invoke("testnet", "init", "--nodes", "2", "--dir", str(tmp_path / "a"), "--base-port", str(base))
    assert result.exit_code == 0, result.output
    assert f"API http://127.0.0.1:{base + 1}" in result.output and f"P2P /ip4/127.0.0.1/tcp/{base + 10}" in result.output
    configs = [read_config(Home(tmp_path / "a" / f"node{i}").config_file) for i in range(2)]
    assert [c.rpc.listen for c in configs] == [f"127.0.0.1:{base + 1}", f"127.0.0.1:{base + 11}"]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base + 11))
        busy.listen()
        clash = invoke("testnet", "init", "--nodes", "2", "--dir", str(tmp_path / "b"), "--base-port", str(base))
    assert clash.exit_code == 1 and f"port {base + 11} on 127.0.0.1 is in use" in clash.output
    assert "Traceback" not in clash.output and not (tmp_path / "b" / "node0").exists()


def test_rpc_defaults_to_the_api_of_the_node_in_home(tmp_path):
    from agent_world_tools.signing import DEFAULT_RPC, rpc_for

    assert invoke("testnet", "init", "--nodes", "1", "--dir", str(tmp_path)).exit_code == 0
    home = tmp_path / "node0"
    listen = read_config(Home(home).config_file).rpc.listen
    assert rpc_for(None, home) == f"http://{listen}"
    assert rpc_for("http://elsewhere:1", home) == "http://elsewhere:1"
    assert rpc_for(None, None) == DEFAULT_RPC == "http://127.0.0.1:26657"
    result = invoke("status", "--home", str(home))  # nothing runs there: the error names that node's API
    assert result.exit_code == 1 and listen.split(":")[1] in result.output and "Traceback" not in result.output
