//! P7 cost of durability (issue 10): a broker's throughput for its local clients at QoS 1, every
//! message forwarded, with the crash-safe spool on and off, against plain Mosquitto. Setups
//! alternated in each round (plain, spool off, spool on), as P1 does.

use super::*;

pub fn p7(ctx: &mut Ctx, args: &Args, report: &mut Report) {
    let qos = QoS::AtLeastOnce;
    let mut plain = Vec::new();
    let mut spool_off = Vec::new();
    let mut spool_on = Vec::new();
    for round in 0..args.rounds {
        for setup in 0..3 {
            let name = format!("p7-r{round}-s{setup}");
            let spool = format!(
                "plugin_opt_spool_dir {}",
                ctx.dir.path().join(&name).display()
            );
            let broker = match setup {
                0 => Broker::start(ctx.dir.path(), &name, bench_conf()),
                1 => plugin_broker(ctx, &name, &ctx.user("d"), &["plugin_opt_publish bench/#"]),
                _ => plugin_broker(
                    ctx,
                    &name,
                    &ctx.user("d"),
                    &["plugin_opt_publish bench/#", &spool],
                ),
            };
            let rate = local_rate(&broker, &name, args.messages, qos);
            [&mut plain, &mut spool_off, &mut spool_on][setup].push(rate);
        }
    }
    let p = report.figure("P7", "plain mosquitto qos1", "msg/s", &plain);
    let off = report.figure("P7", "plugin, spool off qos1", "msg/s", &spool_off);
    let on = report.figure("P7", "plugin, spool on qos1", "msg/s", &spool_on);
    report.ratio("P7 qos1 plugin with spool/plain", on / p, "report");
    report.ratio("P7 qos1 spool on/off", on / off, "report");
}
