// The generated Kotlin bindings on the JVM (as on Android, through JNA) against a real
// router and real gateways. Run by tests/tests/bindings.rs, which passes the routers'
// ports, the test CA and the ALPN protocol in the environment (see test_sdk.py).

import com.sun.jna.Library
import com.sun.jna.Native
import java.io.File
import java.net.InetAddress
import kotlinx.coroutines.runBlocking
import uniffi.gateway_sdk.GatewayClient
import uniffi.gateway_sdk.SdkConfig
import uniffi.gateway_sdk.SdkException

fun env(name: String): String = System.getenv(name) ?: throw IllegalStateException("$name is not set")

fun check(cond: Boolean, what: () -> String) {
    if (!cond) throw AssertionError(what())
}

fun config(portVar: String, alpn: List<String> = listOf()) = SdkConfig(
    routerDomain = "router.test",
    routerPort = env(portVar).toUShort(),
    routerHttps = false,
    bootstrap = mapOf("router.test" to listOf("127.0.0.1")),
    localFallback = false,
    ipv6 = false,
    extraRootsPem = File(env("SDK_CA_PEM")).readText(),
    tlsAlpn = alpn,
    routerAttemptTimeoutMs = 10_000u,
    routerBudgetMs = 20_000u,
    deadlineMs = 30_000u,
)

/** libc, to use a file descriptor the SDK handed over (on Android: ParcelFileDescriptor.adoptFd). */
interface LibC : Library {
    fun write(fd: Int, buf: ByteArray, n: Long): Long
    fun read(fd: Int, buf: ByteArray, n: Long): Long
    fun close(fd: Int): Int
}

/** The OkHttp `Dns` adapter is these three lines over `lookup` (OkHttp is not on this classpath). */
fun okhttpStyleLookup(client: GatewayClient, host: String): List<InetAddress> =
    client.lookup(host).map { InetAddress.getByName(it) }

fun main() = runBlocking {
    val alpn = env("SDK_ALPN")
    val client = GatewayClient(config("SDK_ROUTER_PORT", listOf(alpn)))

    val g = client.gateways()
    check(g.source == "router") { "source ${g.source}" }
    check(g.gateways.map { it.id } == listOf("gw-plain", "gw-tls")) { "order ${g.gateways}" }

    // Plain TCP.
    val conn = client.connect()
    check(conn.gateway().id == "gw-plain") { "plain: ${conn.gateway()}" }
    conn.write("ping".toByteArray())
    check(String(conn.read(64u)) == "ping") { "echo" }
    conn.shutdown()

    // TLS: the gateway's domain as SNI and certificate name, ALPN agreed.
    val tls = client.connectTls()
    check(tls.gateway().id == "gw-tls") { "tls: ${tls.gateway()}" }
    check(tls.isTls() && tls.alpn() == alpn) { "alpn ${tls.alpn()}" }
    tls.write("over tls".toByteArray())
    var got = ByteArray(0)
    while (got.size < 8) got += tls.read(64u)
    check(String(got) == "over tls") { "tls echo" }
    tls.shutdown()

    // The socket itself, for the app's own I/O.
    val libc = Native.load("c", LibC::class.java)
    val fd = client.connect().takeFd()
    check(libc.write(fd, "fd".toByteArray(), 2) == 2L) { "write to fd" }
    val buf = ByteArray(2)
    check(libc.read(fd, buf, 2) == 2L && String(buf) == "fd") { "read from fd" }
    libc.close(fd)

    // A migration never lands on the gateway being left.
    val left = client.connect()
    check(client.migrate(left, 1u).gateway().id == "gw-tls") { "migrated" }

    check(okhttpStyleLookup(client, "router.test") == listOf(InetAddress.getByName("127.0.0.1"))) { "lookup" }
    client.prefetch(listOf("router.test"))
    client.networkChanged()

    // A full fleet: the router's refusal, with Retry-After.
    try {
        GatewayClient(config("SDK_FULL_PORT")).connect()
        throw AssertionError("a full fleet connected")
    } catch (e: SdkException.Refused) {
        check((e.retryAfterMs ?: 0u) > 0u) { "retry after: $e" }
        check(e.detail.contains("no_gateways")) { e.detail }
    }

    // A certificate for another name: the TLS error at the end of the cause chain.
    try {
        GatewayClient(config("SDK_BADCERT_PORT")).connectTls()
        throw AssertionError("a certificate for another name was accepted")
    } catch (e: SdkException.Connect) {
        check(e.causes.any { it.contains("not valid for name") }) { "causes ${e.causes}" }
    }
    println("kotlin bindings: ok")
}
