package dev.edgehierarchy.est;

import java.io.FileReader;
import java.io.IOException;
import java.io.Reader;
import java.security.KeyPair;
import java.security.KeyPairGenerator;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.Security;
import java.security.cert.TrustAnchor;
import java.security.cert.X509Certificate;
import java.security.spec.ECGenParameterSpec;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;

import javax.net.ssl.KeyManager;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.X509TrustManager;

import org.bouncycastle.asn1.pkcs.PrivateKeyInfo;
import org.bouncycastle.asn1.x500.X500Name;
import org.bouncycastle.asn1.x500.style.BCStyle;
import org.bouncycastle.asn1.x500.style.IETFUtils;
import org.bouncycastle.asn1.x509.BasicConstraints;
import org.bouncycastle.asn1.x509.Extension;
import org.bouncycastle.cert.X509CertificateHolder;
import org.bouncycastle.cert.jcajce.JcaX509CertificateConverter;
import org.bouncycastle.est.CACertsResponse;
import org.bouncycastle.est.ESTException;
import org.bouncycastle.est.ESTService;
import org.bouncycastle.est.EnrollmentResponse;
import org.bouncycastle.est.jcajce.JcaJceUtils;
import org.bouncycastle.est.jcajce.JsseESTServiceBuilder;
import org.bouncycastle.jce.provider.BouncyCastleProvider;
import org.bouncycastle.openssl.PEMKeyPair;
import org.bouncycastle.openssl.PEMParser;
import org.bouncycastle.openssl.jcajce.JcaPEMKeyConverter;
import org.bouncycastle.operator.jcajce.JcaContentSignerBuilder;
import org.bouncycastle.operator.jcajce.JcaContentVerifierProviderBuilder;
import org.bouncycastle.pkcs.PKCS10CertificationRequest;
import org.bouncycastle.pkcs.jcajce.JcaPKCS10CertificationRequestBuilder;

/**
 * EST conformance of the operator's server, checked with Bouncy Castle's client (RFC 7030):
 * cacerts and simpleenroll with TLS client authentication succeed and return certificates that
 * chain to the hierarchy's root; a request for another device's name, an expired client
 * certificate, one from an unknown CA, and no client certificate are refused. Exits 1 on the
 * first check that fails.
 *
 * Arguments (all required): --server HOST:PORT --trust EST-CA.pem --root ROOT.pem --device ID
 * --cert PEM --key PEM --other ID --expired-cert PEM --expired-key PEM --unknown-cert PEM
 * --unknown-key PEM
 */
public final class Conformance {
    private static final char[] PASSWORD = "conformance".toCharArray();

    private final Map<String, String> args;
    private final X509TrustManager[] trust;
    private final X509CertificateHolder root;
    private int passed;

    private Conformance(Map<String, String> args) throws Exception {
        this.args = args;
        X509CertificateHolder estCa = readCertificates(arg("--trust")).get(0);
        X509Certificate anchor = new JcaX509CertificateConverter().setProvider("BC").getCertificate(estCa);
        this.trust = JcaJceUtils.getCertPathTrustManager(Set.of(new TrustAnchor(anchor, null)), null);
        this.root = readCertificates(arg("--root")).get(0);
    }

    public static void main(String[] argv) throws Exception {
        Security.addProvider(new BouncyCastleProvider());
        Map<String, String> args = new HashMap<>();
        for (int i = 0; i + 1 < argv.length; i += 2) {
            args.put(argv[i], argv[i + 1]);
        }
        Conformance c = new Conformance(args);
        try {
            c.run();
        } catch (Failure f) {
            System.out.println("FAIL " + f.getMessage());
            System.exit(1);
        }
        System.out.println("est-conformance: " + c.passed + " checks passed");
    }

    private void run() throws Exception {
        String device = arg("--device");
        ESTService valid = service(arg("--cert"), arg("--key"));

        CACertsResponse caCerts = valid.getCACerts();
        Collection<X509CertificateHolder> cas = caCerts.getCertificateStore().getMatches(null);
        check(cas.contains(root), "cacerts returns the hierarchy's root (got " + cas.size() + " certificates)");

        X509CertificateHolder edgeCa = enroll(valid, device + ".deviceca");
        check(commonName(edgeCa).equals(device + ".deviceca"), "simpleenroll issues the edge CA " + device + ".deviceca");
        check(signedByRoot(edgeCa), "the edge CA chains to the hierarchy's root");
        BasicConstraints bc = BasicConstraints.fromExtensions(edgeCa.getExtensions());
        check(bc != null && bc.isCA(), "the edge CA is a CA certificate");

        X509CertificateHolder identity = enroll(valid, device);
        check(commonName(identity).equals(device), "simpleenroll issues the identity " + device);
        check(signedByRoot(identity), "the identity chains to the hierarchy's root");
        check(identity.getExtension(Extension.basicConstraints) == null
            || !BasicConstraints.fromExtensions(identity.getExtensions()).isCA(), "the identity is no CA");

        refused(valid, arg("--other"), 403, "a request for another device's name");
        refused(valid, arg("--other") + ".deviceca", 403, "a request for another device's edge CA");
        refused(service(arg("--expired-cert"), arg("--expired-key")), device, 403, "an expired client certificate");
        refused(service(arg("--unknown-cert"), arg("--unknown-key")), device, 403, "a client certificate from an unknown CA");
        refused(service(null, null), device, 401, "a request without a client certificate");
    }

    private ESTService service(String certFile, String keyFile) throws Exception {
        JsseESTServiceBuilder builder = new JsseESTServiceBuilder(arg("--server"), trust);
        if (certFile != null) {
            List<X509CertificateHolder> chain = readCertificates(certFile);
            X509Certificate[] certs = new X509Certificate[chain.size()];
            JcaX509CertificateConverter converter = new JcaX509CertificateConverter().setProvider("BC");
            for (int i = 0; i < certs.length; i++) {
                certs[i] = converter.getCertificate(chain.get(i));
            }
            KeyStore store = KeyStore.getInstance("PKCS12");
            store.load(null, null);
            store.setKeyEntry("client", readKey(keyFile), PASSWORD, certs);
            KeyManagerFactory factory = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
            factory.init(store, PASSWORD);
            KeyManager[] managers = factory.getKeyManagers();
            builder.withKeyManagers(managers);
        }
        return builder.build();
    }

    private X509CertificateHolder enroll(ESTService service, String commonName) throws Exception {
        EnrollmentResponse response = service.simpleEnroll(false, request(commonName), null);
        check(response.isCompleted(), "simpleenroll for " + commonName + " completes at once");
        Collection<X509CertificateHolder> issued = response.getStore().getMatches(null);
        check(issued.size() == 1, "simpleenroll for " + commonName + " returns one certificate (got " + issued.size() + ")");
        return issued.iterator().next();
    }

    private void refused(ESTService service, String commonName, int status, String what) throws Exception {
        try {
            service.simpleEnroll(false, request(commonName), null);
        } catch (ESTException e) {
            check(e.getStatusCode() == status, what + " is refused with " + status + " (got " + e.getStatusCode() + ": " + e.getMessage() + ")");
            return;
        }
        throw new Failure(what + " was accepted");
    }

    private static PKCS10CertificationRequest request(String commonName) throws Exception {
        KeyPairGenerator generator = KeyPairGenerator.getInstance("EC", "BC");
        generator.initialize(new ECGenParameterSpec("P-256"));
        KeyPair pair = generator.generateKeyPair();
        return new JcaPKCS10CertificationRequestBuilder(new X500Name("CN=" + commonName), pair.getPublic())
            .build(new JcaContentSignerBuilder("SHA256withECDSA").setProvider("BC").build(pair.getPrivate()));
    }

    private boolean signedByRoot(X509CertificateHolder cert) throws Exception {
        return cert.getIssuer().equals(root.getSubject())
            && cert.isSignatureValid(new JcaContentVerifierProviderBuilder().setProvider("BC").build(root));
    }

    private static String commonName(X509CertificateHolder cert) {
        return IETFUtils.valueToString(cert.getSubject().getRDNs(BCStyle.CN)[0].getFirst().getValue());
    }

    private void check(boolean ok, String what) {
        if (!ok) {
            throw new Failure(what);
        }
        passed++;
        System.out.println("PASS " + what);
    }

    private String arg(String name) {
        String value = args.get(name);
        if (value == null) {
            throw new IllegalArgumentException("missing argument " + name);
        }
        return value;
    }

    private static List<X509CertificateHolder> readCertificates(String file) throws IOException {
        List<X509CertificateHolder> out = new ArrayList<>();
        try (Reader reader = new FileReader(file); PEMParser parser = new PEMParser(reader)) {
            Object item;
            while ((item = parser.readObject()) != null) {
                if (item instanceof X509CertificateHolder holder) {
                    out.add(holder);
                }
            }
        }
        if (out.isEmpty()) {
            throw new IOException("no certificate in " + file);
        }
        return out;
    }

    private static PrivateKey readKey(String file) throws IOException {
        try (Reader reader = new FileReader(file); PEMParser parser = new PEMParser(reader)) {
            Object item = parser.readObject();
            JcaPEMKeyConverter converter = new JcaPEMKeyConverter().setProvider("BC");
            if (item instanceof PrivateKeyInfo info) {
                return converter.getPrivateKey(info);
            }
            if (item instanceof PEMKeyPair pair) {
                return converter.getKeyPair(pair).getPrivate();
            }
            throw new IOException("no private key in " + file);
        }
    }

    /** A check that did not hold. */
    private static final class Failure extends RuntimeException {
        Failure(String message) {
            super(message);
        }
    }
}
